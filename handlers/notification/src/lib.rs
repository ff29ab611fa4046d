//! The notification service: consumes reminders (topic `reminders`) and POSTs one
//! [`Notification`] per reminder, as JSON, to the webhook of the handler's setting
//! `webhook_url` (its host must be granted with `grants.http`).
//!
//! The request carries an `Idempotency-Key` header equal to the reminder's event id, so a
//! webhook that honours it never notifies twice for one reminder. A 5xx, 408, 429 or a timeout
//! is `retryable` (the host retries with backoff, then dead-letters); any other 4xx is `fatal`.
//! A reminder that cannot make sense (no title, no user, reminding after the task is due) is
//! refused as `fatal` before anything is sent: retrying it would not fix it.

use kasm_guest::taskapp::{Notification, Reminder};
use kasm_guest::{Event, HandlerError};

/// The setting naming the webhook.
pub const WEBHOOK_SETTING: &str = "webhook_url";

/// The channel of a reminder that names none.
pub const DEFAULT_CHANNEL: &str = "push";

fn handle(event: Event) -> Result<(), HandlerError> {
    let reminder: Reminder = event.json()?;
    let notification = notification(&reminder)?;
    let url = kasm_guest::settings::require(WEBHOOK_SETTING)?;
    let body = serde_json::to_vec(&notification)
        .map_err(|e| HandlerError::fatal(format!("encoding the notification: {e}")))?;
    let response = kasm_guest::http::post(
        &url,
        &[
            ("content-type", "application/json"),
            ("idempotency-key", &notification.idempotency_key),
        ],
        &body,
    )?;
    let status = response.status;
    response.error_for_status()?;
    kasm_guest::log::info(&format!(
        "{} notification for task {} delivered (HTTP {status})",
        notification.channel, notification.task_id
    ));
    Ok(())
}

kasm_guest::handler!(handle);

/// The notification for `reminder`, or a fatal error if the reminder is invalid.
pub fn notification(reminder: &Reminder) -> Result<Notification, HandlerError> {
    if reminder.title.trim().is_empty() {
        return Err(invalid(reminder, "the title is empty"));
    }
    if reminder.user_id.trim().is_empty() {
        return Err(invalid(reminder, "the user_id is empty"));
    }
    if reminder.remind_at > reminder.due_at {
        return Err(invalid(
            reminder,
            &format!(
                "remind_at {} is after due_at {}",
                reminder.remind_at.to_rfc3339(),
                reminder.due_at.to_rfc3339()
            ),
        ));
    }
    let channel = match reminder.channel.as_deref().map(str::trim) {
        Some(channel) if !channel.is_empty() => channel.to_owned(),
        _ => DEFAULT_CHANNEL.to_owned(),
    };
    Ok(Notification {
        idempotency_key: reminder.event_id.clone(),
        user_id: reminder.user_id.clone(),
        channel,
        title: reminder.title.clone(),
        body: format!(
            "\"{}\" is due at {}",
            reminder.title,
            reminder.due_at.format("%Y-%m-%d %H:%M UTC")
        ),
        task_id: reminder.task_id.clone(),
        due_at: reminder.due_at,
    })
}

fn invalid(reminder: &Reminder, why: &str) -> HandlerError {
    HandlerError::fatal(format!("invalid reminder {}: {why}", reminder.event_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reminder(changes: serde_json::Value) -> Reminder {
        let mut value = json!({
            "event_id": "rem-1",
            "task_id": "t-7",
            "user_id": "u1",
            "title": "Buy milk",
            "due_at": "2026-11-27T09:00:00Z",
            "remind_at": "2026-11-27T08:30:00Z",
        });
        if let (Some(base), Some(changes)) = (value.as_object_mut(), changes.as_object()) {
            for (k, v) in changes {
                base.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn builds_the_notification() {
        let n = notification(&reminder(json!({}))).unwrap();
        assert_eq!(n.idempotency_key, "rem-1");
        assert_eq!(n.user_id, "u1");
        assert_eq!(n.channel, "push");
        assert_eq!(n.title, "Buy milk");
        assert_eq!(n.body, "\"Buy milk\" is due at 2026-11-27 09:00 UTC");
        assert_eq!(n.task_id, "t-7");
        assert_eq!(n.due_at.to_rfc3339(), "2026-11-27T09:00:00+00:00");
    }

    #[test]
    fn body_is_in_utc_whatever_the_input_offset() {
        let n = notification(&reminder(json!({
            "due_at": "2026-11-27T10:05:00+01:00",
            "remind_at": "2026-11-27T07:00:00Z",
        })))
        .unwrap();
        assert_eq!(n.body, "\"Buy milk\" is due at 2026-11-27 09:05 UTC");
    }

    #[test]
    fn keeps_the_requested_channel_and_defaults_a_blank_one() {
        let n = notification(&reminder(json!({"channel": "email"}))).unwrap();
        assert_eq!(n.channel, "email");
        let n = notification(&reminder(json!({"channel": "  "}))).unwrap();
        assert_eq!(n.channel, "push");
        let n = notification(&reminder(json!({"channel": null}))).unwrap();
        assert_eq!(n.channel, "push");
    }

    #[test]
    fn remind_at_equal_to_due_at_is_fine() {
        assert!(notification(&reminder(json!({"remind_at": "2026-11-27T09:00:00Z"}))).is_ok());
    }

    #[test]
    fn remind_after_due_is_fatal() {
        let error =
            notification(&reminder(json!({"remind_at": "2026-11-27T09:00:01Z"}))).unwrap_err();
        assert!(error.is_fatal());
        assert!(error.message().contains("remind_at"), "{error}");
        assert!(error.message().contains("rem-1"), "{error}");
    }

    #[test]
    fn empty_title_or_user_is_fatal() {
        let error = notification(&reminder(json!({"title": " "}))).unwrap_err();
        assert!(
            error.is_fatal() && error.message().contains("title"),
            "{error}"
        );
        let error = notification(&reminder(json!({"user_id": ""}))).unwrap_err();
        assert!(
            error.is_fatal() && error.message().contains("user_id"),
            "{error}"
        );
    }

    #[test]
    fn output_json_shape() {
        let n = notification(&reminder(json!({}))).unwrap();
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            json!({
                "idempotency_key": "rem-1",
                "user_id": "u1",
                "channel": "push",
                "title": "Buy milk",
                "body": "\"Buy milk\" is due at 2026-11-27 09:00 UTC",
                "task_id": "t-7",
                "due_at": "2026-11-27T09:00:00Z",
            })
        );
    }

    #[test]
    fn demo_event_notifies() {
        let demo: Reminder = serde_json::from_str(include_str!("../demo/event.json")).unwrap();
        let n = notification(&demo).unwrap();
        assert_eq!(n.body, "\"Buy milk\" is due at 2026-11-27 09:00 UTC");
    }
}
