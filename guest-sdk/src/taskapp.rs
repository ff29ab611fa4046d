//! The task app's events, shared by its handlers (notification, recurring, audit,
//! live-updates).
//!
//! Everything here is JSON with snake_case field names. Dates are ISO 8601 (`2026-11-27`),
//! instants RFC 3339 (`2026-11-27T09:00:00Z`; an input with another offset is converted to
//! UTC). Optional fields may be absent or `null` on input and are left out on output. Unknown
//! fields are ignored, so producers can add fields without breaking the handlers.
//!
//! Inputs: [`TaskEvent`] (topics `task-events`, `task-updates`) and [`Reminder`] (topic
//! `reminders`). Outputs: [`Notification`], [`AuditEntry`], [`LiveUpdate`], and new
//! [`TaskEvent`]s for the next occurrence of a recurring task.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A change to a task, as the task app publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The event's own id; the host uses it to deduplicate.
    pub event_id: String,
    /// What happened: `task.created`, `task.updated`, `task.completed` or `task.deleted`
    /// (see the associated constants and [`TaskEvent::kind`]). Other values are passed through.
    pub event_type: String,
    /// The task the event is about.
    pub task_id: String,
    /// The user who owns the task.
    pub user_id: String,
    /// The task as it is after the change (for `task.deleted`, as it was).
    pub task: TaskData,
    /// When the change happened.
    pub timestamp: DateTime<Utc>,
}

impl TaskEvent {
    /// `event_type` of a new task.
    pub const CREATED: &'static str = "task.created";
    /// `event_type` of a task whose fields changed.
    pub const UPDATED: &'static str = "task.updated";
    /// `event_type` of a task marked done.
    pub const COMPLETED: &'static str = "task.completed";
    /// `event_type` of a removed task.
    pub const DELETED: &'static str = "task.deleted";

    /// [`TaskEvent::event_type`], typed.
    pub fn kind(&self) -> TaskEventKind {
        TaskEventKind::from_event_type(&self.event_type)
    }
}

/// The known values of [`TaskEvent::event_type`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEventKind {
    /// `task.created`
    Created,
    /// `task.updated`
    Updated,
    /// `task.completed`
    Completed,
    /// `task.deleted`
    Deleted,
    /// Any other event type; the string is in [`TaskEvent::event_type`].
    Other,
}

impl TaskEventKind {
    /// The kind named by an `event_type` string (exact match).
    pub fn from_event_type(event_type: &str) -> Self {
        match event_type {
            TaskEvent::CREATED => Self::Created,
            TaskEvent::UPDATED => Self::Updated,
            TaskEvent::COMPLETED => Self::Completed,
            TaskEvent::DELETED => Self::Deleted,
            _ => Self::Other,
        }
    }

    /// The `event_type` string of a known kind; `None` for [`TaskEventKind::Other`].
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            Self::Created => Some(TaskEvent::CREATED),
            Self::Updated => Some(TaskEvent::UPDATED),
            Self::Completed => Some(TaskEvent::COMPLETED),
            Self::Deleted => Some(TaskEvent::DELETED),
            Self::Other => None,
        }
    }
}

/// The fields of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskData {
    /// Short title, e.g. `Buy milk`.
    pub title: String,
    /// Longer free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The day the task is due. Required for a recurring task: the next occurrence is
    /// computed from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_date: Option<NaiveDate>,
    /// Priority as the task app names it (`low`, `medium`, `high`, ...), kept as text so a new
    /// level does not break the handlers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether the task is done.
    #[serde(default)]
    pub completed: bool,
    /// The rule that repeats this task; absent for a one-off task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<Recurrence>,
    /// The series a recurring task belongs to: the task id of its first occurrence. Absent on
    /// the first occurrence itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_id: Option<String>,
    /// Which occurrence of its series this task is, counting from 1. Absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<u32>,
}

/// How a task repeats. The first occurrence is the task's own `due_date`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recurrence {
    /// The unit the rule steps in.
    pub frequency: Frequency,
    /// Step by this many units (every 2 weeks: `weekly` with interval 2). At least 1; default 1.
    #[serde(default = "default_interval")]
    pub interval: u32,
    /// `weekly` only: the days of the week the task falls on (`mon` ... `sun`). Weeks start on
    /// Monday and are counted from the series' first week, so with interval 2 every other week
    /// is skipped. Empty: the weekday of the due date.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weekdays: Vec<Weekday>,
    /// `monthly` only: the day of the month the task falls on (1-31), clamped to the length of
    /// each month. Defaults to the day of the first due date, so a series starting Jan 31 goes
    /// Feb 28 (29 in a leap year), then Mar 31 again, without drifting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day_of_month: Option<u32>,
    /// The last day an occurrence may fall on (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<NaiveDate>,
    /// The total number of occurrences, the first one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

fn default_interval() -> u32 {
    1
}

/// The unit a [`Recurrence`] steps in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    /// Every `interval` days.
    Daily,
    /// Every `interval` weeks, on the rule's weekdays.
    Weekly,
    /// Every `interval` months, on the rule's day of the month.
    Monthly,
}

/// A day of the week, written `mon` ... `sun` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl From<Weekday> for chrono::Weekday {
    fn from(day: Weekday) -> Self {
        match day {
            Weekday::Mon => Self::Mon,
            Weekday::Tue => Self::Tue,
            Weekday::Wed => Self::Wed,
            Weekday::Thu => Self::Thu,
            Weekday::Fri => Self::Fri,
            Weekday::Sat => Self::Sat,
            Weekday::Sun => Self::Sun,
        }
    }
}

impl From<chrono::Weekday> for Weekday {
    fn from(day: chrono::Weekday) -> Self {
        match day {
            chrono::Weekday::Mon => Self::Mon,
            chrono::Weekday::Tue => Self::Tue,
            chrono::Weekday::Wed => Self::Wed,
            chrono::Weekday::Thu => Self::Thu,
            chrono::Weekday::Fri => Self::Fri,
            chrono::Weekday::Sat => Self::Sat,
            chrono::Weekday::Sun => Self::Sun,
        }
    }
}

/// A request to remind a user of a task (topic `reminders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    /// The reminder's own id; becomes the notification's idempotency key.
    pub event_id: String,
    /// The task to remind of.
    pub task_id: String,
    /// The user to remind.
    pub user_id: String,
    /// The task's title, shown in the notification.
    pub title: String,
    /// When the task is due.
    pub due_at: DateTime<Utc>,
    /// When the reminder should go out; not after `due_at`.
    pub remind_at: DateTime<Utc>,
    /// Where to send it (`push`, `email`, ...); absent means `push`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A notification ready to be delivered to a user (topic `notifications`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The id of the reminder it comes from. A delivery service sends each key at most once,
    /// so a redelivered reminder does not notify twice.
    pub idempotency_key: String,
    /// The recipient.
    pub user_id: String,
    /// The delivery channel (`push`, `email`, ...).
    pub channel: String,
    /// The headline, the task's title.
    pub title: String,
    /// The text, e.g. `"Buy milk" is due at 2026-11-27 09:00 UTC`.
    pub body: String,
    /// The task it is about, for a deep link.
    pub task_id: String,
    /// When the task is due.
    pub due_at: DateTime<Utc>,
}

/// One line of the audit log (topic `audit-log`): who did what to which task, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The id of the task event recorded; an audit store can deduplicate on it.
    pub event_id: String,
    /// The task event's `event_type`, as received.
    pub event_type: String,
    /// The task concerned.
    pub task_id: String,
    /// The user who owns the task and made the change.
    pub user_id: String,
    /// When the change happened (the task event's timestamp).
    pub occurred_at: DateTime<Utc>,
    /// A line for humans, e.g. `task "Buy milk" completed by user u1`.
    pub summary: String,
    /// The task's fields as the event carried them.
    pub task: TaskData,
}

/// A change pushed to a user's open clients (topic `live-updates`, then the WebSocket
/// fan-out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveUpdate {
    /// The fan-out channel, `user:<user_id>`: every client of that user subscribes to it.
    pub channel: String,
    /// The task event's `event_type`, so a client knows whether to add, replace or remove.
    pub event_type: String,
    /// The task concerned.
    pub task_id: String,
    /// The task's fields after the change (as it was, for `task.deleted`).
    pub task: TaskData,
    /// When the change happened (the task event's timestamp).
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn created_json() -> serde_json::Value {
        json!({
            "event_id": "evt-1",
            "event_type": "task.created",
            "task_id": "t-1",
            "user_id": "u1",
            "timestamp": "2026-11-20T08:30:00+01:00",
            "task": {
                "title": "Water the plants",
                "description": "balcony too",
                "due_date": "2026-11-27",
                "priority": "high",
                "tags": ["home"],
                "recurrence": {
                    "frequency": "weekly",
                    "interval": 2,
                    "weekdays": ["mon", "fri"],
                    "until": "2027-06-30"
                }
            }
        })
    }

    #[test]
    fn task_event_decodes_with_defaults() {
        let event: TaskEvent = serde_json::from_value(created_json()).unwrap();
        assert_eq!(event.kind(), TaskEventKind::Created);
        assert_eq!(event.timestamp.to_rfc3339(), "2026-11-20T07:30:00+00:00");
        assert_eq!(event.task.due_date, NaiveDate::from_ymd_opt(2026, 11, 27));
        assert!(!event.task.completed);
        assert_eq!(event.task.series_id, None);
        let rule = event.task.recurrence.unwrap();
        assert_eq!(rule.frequency, Frequency::Weekly);
        assert_eq!(rule.interval, 2);
        assert_eq!(rule.weekdays, vec![Weekday::Mon, Weekday::Fri]);
        assert_eq!(rule.count, None);
    }

    #[test]
    fn minimal_task_and_rule_take_defaults() {
        let task: TaskData =
            serde_json::from_value(json!({"title": "x", "recurrence": {"frequency": "daily"}}))
                .unwrap();
        assert!(task.tags.is_empty());
        assert!(!task.completed);
        let rule = task.recurrence.unwrap();
        assert_eq!(rule.interval, 1);
        assert!(rule.weekdays.is_empty());
    }

    #[test]
    fn output_is_snake_case_rfc3339_and_omits_absent_fields() {
        let event: TaskEvent = serde_json::from_value(created_json()).unwrap();
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["timestamp"], "2026-11-20T07:30:00Z");
        assert_eq!(
            value["task"]["recurrence"]["weekdays"],
            json!(["mon", "fri"])
        );
        assert_eq!(value["task"]["due_date"], "2026-11-27");
        assert!(value["task"].get("series_id").is_none());
        assert!(value["task"]["recurrence"].get("count").is_none());
        let back: TaskEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn unknown_event_types_are_other() {
        for (name, kind) in [
            ("task.created", TaskEventKind::Created),
            ("task.updated", TaskEventKind::Updated),
            ("task.completed", TaskEventKind::Completed),
            ("task.deleted", TaskEventKind::Deleted),
            ("task.archived", TaskEventKind::Other),
            ("TASK.CREATED", TaskEventKind::Other),
        ] {
            assert_eq!(TaskEventKind::from_event_type(name), kind, "{name}");
            if kind != TaskEventKind::Other {
                assert_eq!(kind.event_type(), Some(name));
            }
        }
        assert_eq!(TaskEventKind::Other.event_type(), None);
    }

    #[test]
    fn unknown_frequency_or_weekday_is_refused() {
        assert!(serde_json::from_value::<Recurrence>(json!({"frequency": "yearly"})).is_err());
        assert!(
            serde_json::from_value::<Recurrence>(
                json!({"frequency": "weekly", "weekdays": ["monday"]})
            )
            .is_err()
        );
    }

    #[test]
    fn weekdays_convert_both_ways() {
        for day in [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ] {
            assert_eq!(Weekday::from(chrono::Weekday::from(day)), day);
        }
    }

    #[test]
    fn reminder_channel_is_optional() {
        let reminder: Reminder = serde_json::from_value(json!({
            "event_id": "r-1", "task_id": "t-1", "user_id": "u1", "title": "Buy milk",
            "due_at": "2026-11-27T09:00:00Z", "remind_at": "2026-11-27T08:00:00Z"
        }))
        .unwrap();
        assert_eq!(reminder.channel, None);
    }
}
