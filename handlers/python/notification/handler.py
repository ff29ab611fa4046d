"""The notification service: consumes reminders (topic ``reminders``) and POSTs one
notification per reminder, as JSON, to the webhook of the handler's setting ``webhook_url``
(its host must be granted with ``grants.http``).

The request carries an ``Idempotency-Key`` header equal to the reminder's event id, so a
webhook that honours it never notifies twice for one reminder. A 5xx, 408, 429 or a timeout
is retryable (the host retries with backoff, then dead-letters); any other 4xx is fatal. A
reminder that cannot make sense (no title, no user, reminding after the task is due) is
refused as fatal before anything is sent: retrying it would not fix it.

The same service as the Rust handler in ``handlers/notification``, request for request.
"""

from kasm_guest import Event, Fatal, handler, http, log, settings
from kasm_guest.taskapp import Notification, Reminder

#: The setting naming the webhook.
WEBHOOK_SETTING = "webhook_url"

#: The channel of a reminder that names none.
DEFAULT_CHANNEL = "push"


@handler
def handle(event: Event) -> None:
    reminder = Reminder.from_event(event)
    note = notification(reminder)
    url = settings.require(WEBHOOK_SETTING)
    response = http.post(
        url,
        note.encode(),
        headers=[
            ("content-type", "application/json"),
            ("idempotency-key", note.idempotency_key),
        ],
    )
    status = response.status
    response.error_for_status()
    log.info(f"{note.channel} notification for task {note.task_id} delivered (HTTP {status})")


def notification(reminder: Reminder) -> Notification:
    """The notification for ``reminder``; :class:`Fatal` if the reminder is invalid."""
    if not reminder.title.strip():
        raise _invalid(reminder, "the title is empty")
    if not reminder.user_id.strip():
        raise _invalid(reminder, "the user_id is empty")
    if reminder.remind_at > reminder.due_at:
        raise _invalid(
            reminder,
            f"remind_at {reminder.remind_at.rfc3339(z=False)} is after "
            f"due_at {reminder.due_at.rfc3339(z=False)}",
        )
    channel = (reminder.channel or "").strip() or DEFAULT_CHANNEL
    due = reminder.due_at.second.strftime("%Y-%m-%d %H:%M")
    return Notification(
        idempotency_key=reminder.event_id,
        user_id=reminder.user_id,
        channel=channel,
        title=reminder.title,
        body=f'"{reminder.title}" is due at {due} UTC',
        task_id=reminder.task_id,
        due_at=reminder.due_at,
    )


def _invalid(reminder: Reminder, why: str) -> Fatal:
    return Fatal(f"invalid reminder {reminder.event_id}: {why}")
