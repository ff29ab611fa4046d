//! The audit service: consumes task events (topic `task-events`) and emits one
//! [`AuditEntry`] per event to topic `audit-log`, keyed by task id so a task's history stays
//! in order within one partition.
//!
//! Every event type is recorded, unknown ones included: an audit log that skips what it does
//! not understand is not an audit log.

use kasm_guest::taskapp::{AuditEntry, TaskEvent, TaskEventKind};
use kasm_guest::{Event, HandlerError};

/// The topic audit entries go to.
pub const AUDIT_TOPIC: &str = "audit-log";

fn handle(event: Event) -> Result<(), HandlerError> {
    let task_event: TaskEvent = event.json()?;
    let entry = audit_entry(&task_event);
    kasm_guest::publish_json(AUDIT_TOPIC, Some(entry.task_id.as_bytes()), &entry)?;
    kasm_guest::log::debug(&entry.summary);
    Ok(())
}

kasm_guest::handler!(handle);

/// The audit entry recording `event`.
pub fn audit_entry(event: &TaskEvent) -> AuditEntry {
    AuditEntry {
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        task_id: event.task_id.clone(),
        user_id: event.user_id.clone(),
        occurred_at: event.timestamp,
        summary: summary(event),
        task: event.task.clone(),
    }
}

/// One line for humans: `task "Buy milk" completed by user u1`.
pub fn summary(event: &TaskEvent) -> String {
    let action = match event.kind() {
        TaskEventKind::Created => "created",
        TaskEventKind::Updated => "updated",
        TaskEventKind::Completed => "completed",
        TaskEventKind::Deleted => "deleted",
        TaskEventKind::Other => {
            return format!(
                "task {:?}: {} by user {}",
                event.task.title, event.event_type, event.user_id
            );
        }
    };
    format!(
        "task {:?} {action} by user {}",
        event.task.title, event.user_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasm_guest::taskapp::TaskData;

    fn event(event_type: &str, title: &str) -> TaskEvent {
        serde_json::from_value(serde_json::json!({
            "event_id": "evt-42",
            "event_type": event_type,
            "task_id": "t-7",
            "user_id": "u1",
            "timestamp": "2026-11-27T09:15:00Z",
            "task": {"title": title, "tags": ["shopping"], "completed": true}
        }))
        .unwrap()
    }

    #[test]
    fn summary_names_task_action_and_user() {
        assert_eq!(
            summary(&event("task.completed", "Buy milk")),
            r#"task "Buy milk" completed by user u1"#
        );
        assert_eq!(
            summary(&event("task.created", "Buy milk")),
            r#"task "Buy milk" created by user u1"#
        );
        assert_eq!(
            summary(&event("task.updated", "Buy milk")),
            r#"task "Buy milk" updated by user u1"#
        );
        assert_eq!(
            summary(&event("task.deleted", "Buy milk")),
            r#"task "Buy milk" deleted by user u1"#
        );
    }

    #[test]
    fn unknown_event_types_are_recorded_verbatim() {
        assert_eq!(
            summary(&event("task.archived", "Buy milk")),
            r#"task "Buy milk": task.archived by user u1"#
        );
    }

    #[test]
    fn quotes_in_titles_are_escaped() {
        assert_eq!(
            summary(&event("task.created", r#"Read "Dune""#)),
            r#"task "Read \"Dune\"" created by user u1"#
        );
    }

    #[test]
    fn entry_copies_identity_time_and_task() {
        let source = event("task.completed", "Buy milk");
        let entry = audit_entry(&source);
        assert_eq!(entry.event_id, "evt-42");
        assert_eq!(entry.event_type, "task.completed");
        assert_eq!(entry.task_id, "t-7");
        assert_eq!(entry.user_id, "u1");
        assert_eq!(entry.occurred_at, source.timestamp);
        assert_eq!(entry.task, source.task);

        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["occurred_at"], "2026-11-27T09:15:00Z");
        assert_eq!(json["task"]["title"], "Buy milk");
        assert_eq!(json["task"]["tags"], serde_json::json!(["shopping"]));
        let _: TaskData = serde_json::from_value(json["task"].clone()).unwrap();
    }

    #[test]
    fn demo_event_is_recorded() {
        let demo: TaskEvent = serde_json::from_str(include_str!("../demo/event.json")).unwrap();
        assert_eq!(
            audit_entry(&demo).summary,
            r#"task "Buy milk" completed by user u1"#
        );
    }
}
