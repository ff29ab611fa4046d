//! The audit service: consumes task events (topic `task-events`) and writes one row per event
//! to the table `audit_log` of its SQL database (SQLite or PostgreSQL, as the operator grants;
//! the schema is `migrations/001_audit_log.sql`).
//!
//! The event id is the table's key and the insert does nothing on a conflict, so an event that
//! runs again (after a crash, or replayed from the dead-letter topic) adds no second row.
//! Every event type is recorded, unknown ones included: an audit log that skips what it does
//! not understand is not an audit log.

use kasm_guest::sql::{self, Value};
use kasm_guest::taskapp::{AuditEntry, TaskEvent, TaskEventKind};
use kasm_guest::{Event, HandlerError};

/// The insert, idempotent by event id.
pub const INSERT: &str = "INSERT INTO audit_log (event_id, event_type, task_id, user_id, \
     occurred_at, summary, task, source_topic, source_partition, source_offset) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING";

fn handle(event: Event) -> Result<(), HandlerError> {
    let task_event: TaskEvent = event.json()?;
    let entry = audit_entry(&task_event);
    let inserted = sql::execute(INSERT, &row(&entry, &event)?)?;
    if inserted == 0 {
        kasm_guest::log::info(&format!("{} already recorded", entry.event_id));
    } else {
        kasm_guest::log::debug(&entry.summary);
    }
    Ok(())
}

kasm_guest::handler!(handle);

/// The values of [`INSERT`] for `entry`, read from `source`.
pub fn row(entry: &AuditEntry, source: &Event) -> Result<Vec<Value>, HandlerError> {
    let task = serde_json::to_string(&entry.task)
        .map_err(|e| HandlerError::fatal(format!("encoding the task: {e}")))?;
    Ok(vec![
        entry.event_id.as_str().into(),
        entry.event_type.as_str().into(),
        entry.task_id.as_str().into(),
        entry.user_id.as_str().into(),
        entry
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into(),
        entry.summary.as_str().into(),
        task.into(),
        source.topic().into(),
        Value::Integer(source.partition().into()),
        Value::Integer(source.offset()),
    ])
}

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
    fn the_row_binds_every_column_of_the_insert() {
        let source = event("task.completed", "Buy milk");
        let entry = audit_entry(&source);
        let raw = Event::new("evt-42", "task-events", b"{}".to_vec())
            .with_partition(3)
            .with_offset(1234);
        let row = row(&entry, &raw).unwrap();
        assert_eq!(INSERT.matches('$').count(), row.len());
        assert_eq!(row[0], Value::Text("evt-42".into()));
        assert_eq!(row[4], Value::Text("2026-11-27T09:15:00.000Z".into()));
        let task: TaskData = serde_json::from_str(row[6].as_str().unwrap()).unwrap();
        assert_eq!(task, source.task);
        assert_eq!(row[7], Value::Text("task-events".into()));
        assert_eq!(row[8], Value::Integer(3));
        assert_eq!(row[9], Value::Integer(1234));
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
