//! The recurring-task service: consumes task events (topic `task-events`) and, when a task
//! with a recurrence rule is completed, emits a `task.created` [`TaskEvent`] for its next
//! occurrence back to the topic it came from (`task-events` in the task app), keyed by user id. Every other event, a task without a
//! rule, and a series whose rule has ended produce nothing.
//!
//! # The series
//! The first task of a series carries the rule and a due date. Each emitted task keeps the rule,
//! gets `series_id` (the first task's id), `occurrence` (1 for the first task, counting up), a
//! `task_id` derived from both ([`occurrence_task_id`]) and `completed: false`. Its event's
//! timestamp is the completion event's, so re-handling the same completion emits the same
//! event, byte for byte.
//!
//! # The rules
//! - `daily`: every `interval` days.
//! - `weekly` with `weekdays`: the next listed weekday later in the same week, else the first
//!   listed weekday `interval` weeks after this week (weeks start on Monday; since every
//!   occurrence falls in an active week, this counts weeks from the series' first week).
//!   Without `weekdays`: `interval` weeks after the due date, on the same weekday.
//! - `monthly`: `interval` months later, on `day_of_month` clamped to the month's length.
//!   The anchor defaults to the first due date's day and is written into the emitted rule, so
//!   Jan 31 goes Feb 28 (29 in a leap year), then Mar 31 again.
//! - `until` (inclusive) and `count` (total occurrences, the first included) end the series.
//!
//! A rule that is not valid (interval 0, count 0, weekdays outside `weekly`, a day of month
//! outside 1..=31 or outside `monthly`) or a recurring task without a due date is a `fatal`
//! error: the event is wrong, and retrying it would not fix it.

use chrono::{Datelike, Days, NaiveDate};
use kasm_guest::taskapp::{Frequency, Recurrence, TaskData, TaskEvent, TaskEventKind};
use kasm_guest::{Event, HandlerError};

fn handle(event: Event) -> Result<(), HandlerError> {
    let task_event: TaskEvent = event.json()?;
    if task_event.kind() != TaskEventKind::Completed || task_event.task.recurrence.is_none() {
        return Ok(());
    }
    match next_occurrence(&task_event, &kasm_guest::next_event_id())? {
        Some(next) => {
            // Back to the topic the completion came from: the series lives on one topic.
            kasm_guest::publish_json(event.topic(), Some(next.user_id.as_bytes()), &next)?;
            kasm_guest::log::info(&format!(
                "task {} completed: next occurrence {} due {}",
                task_event.task_id,
                next.task_id,
                next.task
                    .due_date
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            ));
        }
        None => kasm_guest::log::info(&format!(
            "task {} completed: its series has ended",
            task_event.task_id
        )),
    }
    Ok(())
}

kasm_guest::handler!(handle);

/// The `task.created` event of the occurrence after the one `event` completes, with event id
/// `new_event_id`; `None` if `event` is not a completion of a recurring task or the series has
/// ended.
pub fn next_occurrence(
    event: &TaskEvent,
    new_event_id: &str,
) -> Result<Option<TaskEvent>, HandlerError> {
    if event.kind() != TaskEventKind::Completed {
        return Ok(None);
    }
    let Some(rule) = &event.task.recurrence else {
        return Ok(None);
    };
    let refuse = |why: String| {
        HandlerError::fatal(format!(
            "task {} (event {}): {why}",
            event.task_id, event.event_id
        ))
    };
    validate(rule).map_err(|why| refuse(format!("invalid recurrence rule: {why}")))?;
    let Some(due) = event.task.due_date else {
        return Err(refuse("recurring task has no due_date".to_owned()));
    };
    let occurrence = event.task.occurrence.unwrap_or(1);
    if occurrence == 0 {
        return Err(refuse("occurrence 0 (occurrences count from 1)".to_owned()));
    }
    if rule.count.is_some_and(|count| occurrence >= count) {
        return Ok(None);
    }
    let next_due = next_due_date(rule, due).map_err(refuse)?;
    if rule.until.is_some_and(|until| next_due > until) {
        return Ok(None);
    }
    let next_number = occurrence
        .checked_add(1)
        .ok_or_else(|| refuse("occurrence number overflows".to_owned()))?;
    let series_id = event
        .task
        .series_id
        .clone()
        .unwrap_or_else(|| event.task_id.clone());

    let mut next_rule = rule.clone();
    if rule.frequency == Frequency::Monthly {
        // Pin the anchor: the next due date may be clamped (Jan 31 -> Feb 28) and must not
        // become the anchor of the one after.
        next_rule.day_of_month = Some(rule.day_of_month.unwrap_or_else(|| due.day()));
    }
    Ok(Some(TaskEvent {
        event_id: new_event_id.to_owned(),
        event_type: TaskEvent::CREATED.to_owned(),
        task_id: occurrence_task_id(&series_id, next_number),
        user_id: event.user_id.clone(),
        task: TaskData {
            due_date: Some(next_due),
            completed: false,
            recurrence: Some(next_rule),
            series_id: Some(series_id),
            occurrence: Some(next_number),
            ..event.task.clone()
        },
        timestamp: event.timestamp,
    }))
}

/// The task id of occurrence `occurrence` of a series: `<series_id>-occ<occurrence>`. The same
/// inputs always give the same id, so a re-handled completion does not create a second task.
pub fn occurrence_task_id(series_id: &str, occurrence: u32) -> String {
    format!("{series_id}-occ{occurrence}")
}

/// Check the rule's fields against each other; the error says what is wrong.
pub fn validate(rule: &Recurrence) -> Result<(), String> {
    if rule.interval == 0 {
        return Err("interval must be at least 1".to_owned());
    }
    if rule.count == Some(0) {
        return Err("count must be at least 1".to_owned());
    }
    if !rule.weekdays.is_empty() && rule.frequency != Frequency::Weekly {
        return Err("weekdays only apply to a weekly rule".to_owned());
    }
    if let Some(day) = rule.day_of_month {
        if rule.frequency != Frequency::Monthly {
            return Err("day_of_month only applies to a monthly rule".to_owned());
        }
        if !(1..=31).contains(&day) {
            return Err(format!("day_of_month {day} is not in 1..=31"));
        }
    }
    Ok(())
}

/// The due date of the occurrence after the one due on `due`, ignoring `until` and `count`.
/// `rule` must be valid (see [`validate`]).
pub fn next_due_date(rule: &Recurrence, due: NaiveDate) -> Result<NaiveDate, String> {
    let out_of_range = || format!("the occurrence after {due} is out of the supported date range");
    let interval = u64::from(rule.interval);
    match rule.frequency {
        Frequency::Daily => due
            .checked_add_days(Days::new(interval))
            .ok_or_else(out_of_range),
        Frequency::Weekly if rule.weekdays.is_empty() => due
            .checked_add_days(Days::new(7 * interval))
            .ok_or_else(out_of_range),
        Frequency::Weekly => {
            let mut days: Vec<u64> = rule
                .weekdays
                .iter()
                .map(|day| u64::from(chrono::Weekday::from(*day).num_days_from_monday()))
                .collect();
            days.sort_unstable();
            days.dedup();
            let today = u64::from(due.weekday().num_days_from_monday());
            match days.iter().find(|day| **day > today) {
                Some(later) => due.checked_add_days(Days::new(later - today)),
                None => {
                    let first = days.first().copied().unwrap_or(today);
                    due.checked_sub_days(Days::new(today))
                        .and_then(|monday| monday.checked_add_days(Days::new(7 * interval + first)))
                }
            }
            .ok_or_else(out_of_range)
        }
        Frequency::Monthly => {
            let anchor = rule.day_of_month.unwrap_or_else(|| due.day());
            let month_index =
                i64::from(due.year()) * 12 + i64::from(due.month0()) + i64::from(rule.interval);
            let year = i32::try_from(month_index.div_euclid(12)).map_err(|_| out_of_range())?;
            let month0 = u32::try_from(month_index.rem_euclid(12)).map_err(|_| out_of_range())?;
            let first = NaiveDate::from_ymd_opt(year, month0 + 1, 1).ok_or_else(out_of_range)?;
            let day = anchor.min(u32::from(first.num_days_in_month()));
            first.with_day(day).ok_or_else(out_of_range)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasm_guest::taskapp::Weekday;
    use serde_json::json;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn rule(value: serde_json::Value) -> Recurrence {
        serde_json::from_value(value).unwrap()
    }

    /// A completion of the first occurrence of a series with `recurrence`, due `due`.
    fn completed(due: Option<&str>, recurrence: serde_json::Value) -> TaskEvent {
        serde_json::from_value(json!({
            "event_id": "evt-done-1",
            "event_type": "task.completed",
            "task_id": "t-1",
            "user_id": "u1",
            "timestamp": "2026-11-27T18:00:00Z",
            "task": {
                "title": "Water the plants",
                "description": "balcony too",
                "due_date": due,
                "priority": "low",
                "tags": ["home"],
                "completed": true,
                "recurrence": recurrence
            }
        }))
        .unwrap()
    }

    /// The completion of the occurrence that `created` announced.
    fn complete(created: &TaskEvent) -> TaskEvent {
        let mut done = created.clone();
        done.event_type = TaskEvent::COMPLETED.to_owned();
        done.event_id = format!("done-{}", created.task_id);
        done.task.completed = true;
        done
    }

    /// The due dates of the next `n` occurrences, following the series event by event.
    fn series(first: &TaskEvent, n: usize) -> Vec<NaiveDate> {
        let mut dates = Vec::new();
        let mut current = first.clone();
        for i in 0..n {
            let Some(next) = next_occurrence(&current, &format!("e{i}")).unwrap() else {
                break;
            };
            dates.push(next.task.due_date.unwrap());
            current = complete(&next);
        }
        dates
    }

    fn next(rule_json: serde_json::Value, due: NaiveDate) -> NaiveDate {
        let rule = rule(rule_json);
        validate(&rule).unwrap();
        next_due_date(&rule, due).unwrap()
    }

    #[test]
    fn daily_interval_three() {
        assert_eq!(
            next(
                json!({"frequency": "daily", "interval": 3}),
                date(2026, 11, 27)
            ),
            date(2026, 11, 30)
        );
        assert_eq!(
            next(
                json!({"frequency": "daily", "interval": 3}),
                date(2026, 12, 30)
            ),
            date(2027, 1, 2)
        );
        let first = completed(
            Some("2024-02-27"),
            json!({"frequency": "daily", "interval": 3}),
        );
        assert_eq!(
            series(&first, 3),
            vec![date(2024, 3, 1), date(2024, 3, 4), date(2024, 3, 7)]
        );
    }

    #[test]
    fn weekly_mon_wed_fri_steps_through_the_week_and_across_its_end() {
        // 2026-11-23 is a Monday.
        let first = completed(
            Some("2026-11-23"),
            json!({"frequency": "weekly", "weekdays": ["fri", "mon", "wed"]}),
        );
        assert_eq!(
            series(&first, 5),
            vec![
                date(2026, 11, 25), // Wed
                date(2026, 11, 27), // Fri
                date(2026, 11, 30), // Mon, next week
                date(2026, 12, 2),
                date(2026, 12, 4),
            ]
        );
    }

    #[test]
    fn weekly_interval_two_skips_every_other_week() {
        let first = completed(
            Some("2026-11-25"),
            json!({"frequency": "weekly", "interval": 2, "weekdays": ["mon", "wed", "fri"]}),
        );
        assert_eq!(
            series(&first, 5),
            vec![
                date(2026, 11, 27), // Fri, same week
                date(2026, 12, 7),  // Mon, two weeks after the week of Nov 23
                date(2026, 12, 9),
                date(2026, 12, 11),
                date(2026, 12, 21),
            ]
        );
    }

    #[test]
    fn weekly_from_a_day_not_in_the_list() {
        // Tuesday 2026-11-24 with Mon/Fri: Friday of the same week, then Monday of the next.
        let rule_json = json!({"frequency": "weekly", "weekdays": ["mon", "fri"]});
        assert_eq!(
            next(rule_json.clone(), date(2026, 11, 24)),
            date(2026, 11, 27)
        );
        // Sunday 2026-11-29 is the end of its week: Monday of the next week.
        assert_eq!(next(rule_json, date(2026, 11, 29)), date(2026, 11, 30));
    }

    #[test]
    fn weekly_without_weekdays_keeps_the_due_dates_weekday() {
        let due = next(
            json!({"frequency": "weekly", "interval": 2}),
            date(2026, 11, 26),
        );
        assert_eq!(due, date(2026, 12, 10));
        assert_eq!(Weekday::from(due.weekday()), Weekday::Thu);
    }

    #[test]
    fn monthly_end_of_month_clamps_without_drift() {
        let first = completed(Some("2025-01-31"), json!({"frequency": "monthly"}));
        assert_eq!(
            series(&first, 4),
            vec![
                date(2025, 2, 28),
                date(2025, 3, 31),
                date(2025, 4, 30),
                date(2025, 5, 31)
            ]
        );
        let leap = completed(Some("2024-01-31"), json!({"frequency": "monthly"}));
        assert_eq!(series(&leap, 2), vec![date(2024, 2, 29), date(2024, 3, 31)]);
    }

    #[test]
    fn monthly_emitted_rule_pins_the_anchor() {
        let first = completed(Some("2025-01-31"), json!({"frequency": "monthly"}));
        let next = next_occurrence(&first, "e").unwrap().unwrap();
        assert_eq!(next.task.recurrence.unwrap().day_of_month, Some(31));
    }

    #[test]
    fn monthly_explicit_anchor_and_interval_across_a_year() {
        assert_eq!(
            next(
                json!({"frequency": "monthly", "interval": 2, "day_of_month": 30}),
                date(2026, 11, 30)
            ),
            date(2027, 1, 30)
        );
        assert_eq!(
            next(
                json!({"frequency": "monthly", "day_of_month": 15}),
                date(2026, 11, 3)
            ),
            date(2026, 12, 15)
        );
    }

    #[test]
    fn leap_day_with_interval_twelve() {
        let first = completed(
            Some("2024-02-29"),
            json!({"frequency": "monthly", "interval": 12}),
        );
        assert_eq!(
            series(&first, 4),
            vec![
                date(2025, 2, 28),
                date(2026, 2, 28),
                date(2027, 2, 28),
                date(2028, 2, 29)
            ]
        );
    }

    #[test]
    fn until_is_inclusive() {
        // Next would be Dec 1, after until: the series has ended.
        let ended = completed(
            Some("2026-11-28"),
            json!({"frequency": "daily", "interval": 3, "until": "2026-11-30"}),
        );
        assert_eq!(next_occurrence(&ended, "e").unwrap(), None);
        // Next is Nov 30, equal to until: emitted, and it is the last one.
        let last = completed(
            Some("2026-11-27"),
            json!({"frequency": "daily", "interval": 3, "until": "2026-11-30"}),
        );
        assert_eq!(series(&last, 5), vec![date(2026, 11, 30)]);
    }

    #[test]
    fn count_counts_all_occurrences() {
        let first = completed(
            Some("2026-11-27"),
            json!({"frequency": "daily", "count": 3}),
        );
        let emitted: Vec<u32> = {
            let mut current = first.clone();
            let mut numbers = Vec::new();
            while let Some(next) = next_occurrence(&current, "e").unwrap() {
                numbers.push(next.task.occurrence.unwrap());
                current = complete(&next);
            }
            numbers
        };
        assert_eq!(emitted, vec![2, 3]);

        let mut exhausted = first;
        exhausted.task.occurrence = Some(3);
        exhausted.task.series_id = Some("t-1".into());
        assert_eq!(next_occurrence(&exhausted, "e").unwrap(), None);

        let single = completed(
            Some("2026-11-27"),
            json!({"frequency": "daily", "count": 1}),
        );
        assert_eq!(next_occurrence(&single, "e").unwrap(), None);
    }

    #[test]
    fn the_next_event_is_a_new_task_of_the_same_series() {
        let first = completed(Some("2026-11-27"), json!({"frequency": "weekly"}));
        let next = next_occurrence(&first, "evt-next").unwrap().unwrap();
        assert_eq!(next.event_id, "evt-next");
        assert_eq!(next.event_type, "task.created");
        assert_eq!(next.task_id, "t-1-occ2");
        assert_eq!(next.user_id, "u1");
        assert_eq!(next.timestamp, first.timestamp);
        assert_eq!(next.task.series_id.as_deref(), Some("t-1"));
        assert_eq!(next.task.occurrence, Some(2));
        assert!(!next.task.completed);
        assert_eq!(next.task.due_date, Some(date(2026, 12, 4)));
        assert_eq!(next.task.title, first.task.title);
        assert_eq!(next.task.description, first.task.description);
        assert_eq!(next.task.tags, first.task.tags);
        assert_eq!(next.task.priority, first.task.priority);
        assert_eq!(next.task.recurrence, first.task.recurrence);

        // The third occurrence keeps the series id and derives its id from it.
        let third = next_occurrence(&complete(&next), "evt-3").unwrap().unwrap();
        assert_eq!(third.task_id, "t-1-occ3");
        assert_eq!(third.task.series_id.as_deref(), Some("t-1"));
        assert_eq!(third.task.occurrence, Some(3));
    }

    #[test]
    fn deterministic_for_the_same_completion() {
        let first = completed(Some("2026-11-27"), json!({"frequency": "daily"}));
        assert_eq!(
            next_occurrence(&first, "e").unwrap(),
            next_occurrence(&first, "e").unwrap()
        );
    }

    #[test]
    fn other_events_and_one_off_tasks_produce_nothing() {
        let recurring = completed(Some("2026-11-27"), json!({"frequency": "daily"}));
        for event_type in [
            "task.created",
            "task.updated",
            "task.deleted",
            "task.archived",
        ] {
            let mut event = recurring.clone();
            event.event_type = event_type.to_owned();
            assert_eq!(next_occurrence(&event, "e").unwrap(), None, "{event_type}");
        }
        let mut one_off = recurring;
        one_off.task.recurrence = None;
        assert_eq!(next_occurrence(&one_off, "e").unwrap(), None);
    }

    #[test]
    fn interval_zero_is_fatal() {
        let event = completed(
            Some("2026-11-27"),
            json!({"frequency": "daily", "interval": 0}),
        );
        let error = next_occurrence(&event, "e").unwrap_err();
        assert!(error.is_fatal());
        assert!(
            error.message().contains("interval must be at least 1"),
            "{error}"
        );
        assert!(error.message().contains("t-1"), "{error}");
    }

    #[test]
    fn missing_due_date_is_fatal() {
        let event = completed(None, json!({"frequency": "daily"}));
        let error = next_occurrence(&event, "e").unwrap_err();
        assert!(error.is_fatal());
        assert!(error.message().contains("no due_date"), "{error}");
    }

    #[test]
    fn other_invalid_rules_are_refused() {
        for (value, why) in [
            (json!({"frequency": "daily", "count": 0}), "count"),
            (
                json!({"frequency": "daily", "weekdays": ["mon"]}),
                "weekdays",
            ),
            (
                json!({"frequency": "weekly", "day_of_month": 3}),
                "day_of_month",
            ),
            (
                json!({"frequency": "monthly", "day_of_month": 32}),
                "day_of_month",
            ),
            (
                json!({"frequency": "monthly", "day_of_month": 0}),
                "day_of_month",
            ),
        ] {
            let error = validate(&rule(value.clone())).unwrap_err();
            assert!(error.contains(why), "{value}: {error}");
        }
        let mut zero = completed(Some("2026-11-27"), json!({"frequency": "daily"}));
        zero.task.occurrence = Some(0);
        assert!(next_occurrence(&zero, "e").unwrap_err().is_fatal());
    }

    #[test]
    fn end_of_the_calendar_is_fatal_not_a_panic() {
        let event = completed(Some("+262142-12-31"), json!({"frequency": "daily"}));
        let error = next_occurrence(&event, "e").unwrap_err();
        assert!(
            error.is_fatal() && error.message().contains("out of the supported date range"),
            "{error}"
        );
    }

    #[test]
    fn demo_event_emits_the_next_occurrence() {
        let demo: TaskEvent = serde_json::from_str(include_str!("../demo/event.json")).unwrap();
        let next = next_occurrence(&demo, "e").unwrap().unwrap();
        // Friday 2026-11-27 with Mon/Fri: Monday 2026-11-30.
        assert_eq!(next.task.due_date, Some(date(2026, 11, 30)));
        assert_eq!(next.task_id, "t-42-occ2");
    }
}
