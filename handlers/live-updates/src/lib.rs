//! The live-updates service: consumes task events (topic `task-updates`; `task-events` works
//! too) and pushes one [`LiveUpdate`] per event to the WebSocket clients of its user's channel
//! `user:<user_id>` (the host's `GET /ws`).
//!
//! Every event type is forwarded; a client ignores the ones it does not know.

use kasm_guest::taskapp::{LiveUpdate, TaskEvent};
use kasm_guest::{Event, HandlerError};

fn handle(event: Event) -> Result<(), HandlerError> {
    let task_event: TaskEvent = event.json()?;
    let update = live_update(&task_event)?;
    kasm_guest::websocket::broadcast_json(&update.channel, &update)?;
    kasm_guest::log::debug(&format!(
        "{} pushed to {}",
        update.event_type, update.channel
    ));
    Ok(())
}

kasm_guest::handler!(handle);

/// The fan-out channel of a user's clients.
pub fn user_channel(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The update pushing `event` to its user's clients. An event without a user has no audience:
/// that is a fatal error.
pub fn live_update(event: &TaskEvent) -> Result<LiveUpdate, HandlerError> {
    if event.user_id.trim().is_empty() {
        return Err(HandlerError::fatal(format!(
            "task event {} has an empty user_id",
            event.event_id
        )));
    }
    Ok(LiveUpdate {
        channel: user_channel(&event.user_id),
        event_type: event.event_type.clone(),
        task_id: event.task_id.clone(),
        task: event.task.clone(),
        at: event.timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(user_id: &str, event_type: &str) -> TaskEvent {
        serde_json::from_value(json!({
            "event_id": "evt-3",
            "event_type": event_type,
            "task_id": "t-9",
            "user_id": user_id,
            "timestamp": "2026-11-27T09:15:00Z",
            "task": {"title": "Call mom", "due_date": "2026-11-28", "priority": "high"}
        }))
        .unwrap()
    }

    #[test]
    fn update_goes_to_the_users_channel() {
        let source = event("u1", "task.updated");
        let update = live_update(&source).unwrap();
        assert_eq!(update.channel, "user:u1");
        assert_eq!(update.event_type, "task.updated");
        assert_eq!(update.task_id, "t-9");
        assert_eq!(update.task, source.task);
        assert_eq!(update.at, source.timestamp);
    }

    #[test]
    fn unknown_event_types_are_forwarded() {
        let update = live_update(&event("u1", "task.archived")).unwrap();
        assert_eq!(update.event_type, "task.archived");
    }

    #[test]
    fn empty_user_is_fatal() {
        let error = live_update(&event(" ", "task.created")).unwrap_err();
        assert!(error.is_fatal());
        assert!(error.message().contains("evt-3"), "{error}");
    }

    #[test]
    fn output_json_shape() {
        let update = live_update(&event("u1", "task.deleted")).unwrap();
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            json!({
                "channel": "user:u1",
                "event_type": "task.deleted",
                "task_id": "t-9",
                "task": {
                    "title": "Call mom",
                    "due_date": "2026-11-28",
                    "priority": "high",
                    "tags": [],
                    "completed": false
                },
                "at": "2026-11-27T09:15:00Z"
            })
        );
    }

    #[test]
    fn demo_event_is_pushed() {
        let demo: TaskEvent = serde_json::from_str(include_str!("../demo/event.json")).unwrap();
        assert_eq!(live_update(&demo).unwrap().channel, "user:u1");
    }
}
