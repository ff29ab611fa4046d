"""The audit service: consumes task events (topic ``task-events``) and writes one row per
event to the table ``audit_log`` of its SQL database (SQLite or PostgreSQL, as the operator
grants; the schema is ``handlers/audit/migrations/001_audit_log.sql``, shared with the Rust
handler).

The event id is the table's key and the insert does nothing on a conflict, so an event that
runs again (after a crash, or replayed from the dead-letter topic) adds no second row. Every
event type is recorded, unknown ones included: an audit log that skips what it does not
understand is not an audit log.

The same service as the Rust handler in ``handlers/audit``, row for row.
"""

from kasm_guest import Event, handler, log, sql
from kasm_guest.taskapp import AuditEntry, TaskEvent

#: The insert, idempotent by event id.
INSERT = (
    "INSERT INTO audit_log (event_id, event_type, task_id, user_id, "
    "occurred_at, summary, task, source_topic, source_partition, source_offset) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (event_id) DO NOTHING"
)

_ACTIONS = {
    TaskEvent.CREATED: "created",
    TaskEvent.UPDATED: "updated",
    TaskEvent.COMPLETED: "completed",
    TaskEvent.DELETED: "deleted",
}


@handler
def handle(event: Event) -> None:
    task_event = TaskEvent.from_event(event)
    entry = audit_entry(task_event)
    inserted = sql.execute(INSERT, row(entry, event))
    if inserted == 0:
        log.info(f"{entry.event_id} already recorded")
    else:
        log.debug(entry.summary)


def row(entry: AuditEntry, source: Event) -> list:
    """The values of :data:`INSERT` for ``entry``, read from ``source``."""
    return [
        entry.event_id,
        entry.event_type,
        entry.task_id,
        entry.user_id,
        entry.occurred_at.rfc3339_millis(),
        entry.summary,
        entry.task.encode(),
        source.topic,
        source.partition,
        source.offset,
    ]


def audit_entry(event: TaskEvent) -> AuditEntry:
    """The audit entry recording ``event``."""
    return AuditEntry(
        event_id=event.event_id,
        event_type=event.event_type,
        task_id=event.task_id,
        user_id=event.user_id,
        occurred_at=event.timestamp,
        summary=summary(event),
        task=event.task,
    )


def summary(event: TaskEvent) -> str:
    """One line for humans: ``task "Buy milk" completed by user u1``."""
    title = quoted(event.task.title)
    action = _ACTIONS.get(event.event_type)
    if action is None:
        return f"task {title}: {event.event_type} by user {event.user_id}"
    return f"task {title} {action} by user {event.user_id}"


def quoted(text: str) -> str:
    """``text`` in double quotes with quotes, backslashes and control characters escaped,
    the way the Rust handler writes it (Rust's ``{:?}``), so both write the same summary."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
