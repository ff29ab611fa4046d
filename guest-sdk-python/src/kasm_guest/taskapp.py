"""The task app's events, shared by its handlers (notification, recurring, audit,
live-updates), with the same JSON as the Rust SDK's ``kasm_guest::taskapp``.

Everything is JSON with snake_case field names. Dates are ISO 8601 (``2026-11-27``), instants
RFC 3339 (``2026-11-27T09:00:00Z``; an input with another offset is converted to UTC).
Optional fields may be absent or ``null`` on input and are left out on output; fields with a
default (``tags``, ``completed``, ``interval``, ``weekdays``) may be absent but not ``null``.
Unknown fields are ignored, so producers can add fields without breaking the handlers.
Output keeps the Rust field order, so both SDKs write the same bytes for the same value.

Decoding a payload that does not fit (:meth:`TaskEvent.from_event`,
:meth:`Reminder.from_event`) is :class:`~kasm_guest.Fatal` with the message
``undecodable payload: <why>``: it will not fit on a retry either.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Optional, TypeVar

from ._codec import compact_json
from .errors import Fatal
from .event import Event

__all__ = [
    "DecodeError",
    "Instant",
    "TaskEvent",
    "TaskData",
    "Recurrence",
    "FREQUENCIES",
    "WEEKDAYS",
    "Reminder",
    "Notification",
    "AuditEntry",
    "LiveUpdate",
]

#: The units a :class:`Recurrence` steps in.
FREQUENCIES = ("daily", "weekly", "monthly")
#: Days of the week as JSON writes them, Monday first.
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_U32_MAX = 2**32 - 1
_T = TypeVar("_T")


class DecodeError(ValueError):
    """A JSON value that does not fit the type; the message names the field."""


# --- instants ---------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


@dataclass(frozen=True, order=True)
class Instant:
    """A point in time in UTC with nanoseconds (Python's datetime stops at microseconds)."""

    #: The whole second, an aware UTC datetime with ``microsecond == 0``.
    second: datetime
    #: Nanoseconds into that second, 0 to 999,999,999.
    nanos: int = 0

    @classmethod
    def parse(cls, text: str) -> "Instant":
        """An RFC 3339 instant (``2026-11-27T10:00:00.5+01:00``), converted to UTC."""
        match = _RFC3339.match(text)
        if match is None:
            raise DecodeError(f"{text!r} is not an RFC 3339 date-time")
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        try:
            local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        except ValueError as error:
            raise DecodeError(f"{text!r}: {error}") from None
        if offset in ("Z", "z"):
            shift = timedelta(0)
        else:
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                raise DecodeError(f"{text!r}: offset {offset} out of range")
            shift = sign * timedelta(hours=hours, minutes=minutes)
        try:
            utc = (local - shift).replace(tzinfo=timezone.utc)
        except OverflowError:
            raise DecodeError(f"{text!r}: out of the supported range") from None
        nanos = int((fraction or "0")[:9].ljust(9, "0"))
        return cls(utc, nanos)

    @classmethod
    def of(cls, moment: datetime) -> "Instant":
        """The instant of an aware datetime."""
        if moment.tzinfo is None:
            raise ValueError("an Instant needs an aware datetime")
        utc = moment.astimezone(timezone.utc)
        return cls(utc.replace(microsecond=0), utc.microsecond * 1000)

    @property
    def datetime(self) -> datetime:
        """This instant as an aware UTC datetime (nanoseconds truncated to microseconds)."""
        return self.second.replace(microsecond=self.nanos // 1000)

    def rfc3339(self, z: bool = True) -> str:
        """RFC 3339 with as many fraction digits as needed (0, 3, 6 or 9), as chrono writes
        it: ``2026-11-27T09:00:00Z``, or ``...+00:00`` with ``z=False``."""
        if self.nanos == 0:
            fraction = ""
        elif self.nanos % 1_000_000 == 0:
            fraction = f".{self.nanos // 1_000_000:03d}"
        elif self.nanos % 1000 == 0:
            fraction = f".{self.nanos // 1000:06d}"
        else:
            fraction = f".{self.nanos:09d}"
        return self.second.strftime("%Y-%m-%dT%H:%M:%S") + fraction + ("Z" if z else "+00:00")

    def rfc3339_millis(self) -> str:
        """RFC 3339 with exactly three fraction digits (truncated) and ``Z``."""
        return self.second.strftime("%Y-%m-%dT%H:%M:%S") + f".{self.nanos // 1_000_000:03d}Z"

    def __str__(self) -> str:
        return self.rfc3339()


# --- field readers ----------------------------------------------------------------------

_MISSING = object()


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected an object, found {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{json.dumps(value)}`"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected a string, found {_kind(value)}")
    return value


def _u32(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32_MAX:
        raise DecodeError(f"{what}: expected an integer from 0 to {_U32_MAX}, found {_kind(value)}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(f"{what}: expected a boolean, found {_kind(value)}")
    return value


def _date(value: Any, what: str) -> date:
    text = _string(value, what)
    match = re.match(r"^(\d{4})-(\d{2})-(\d{2})$", text)
    if match is None:
        raise DecodeError(f"{what}: {text!r} is not a date (YYYY-MM-DD)")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError as error:
        raise DecodeError(f"{what}: {text!r}: {error}") from None


def _instant(value: Any, what: str) -> Instant:
    try:
        return Instant.parse(_string(value, what))
    except DecodeError as error:
        raise DecodeError(f"{what}: {error}") from None


def _list(value: Any, what: str, item: Callable[[Any, str], _T]) -> list[_T]:
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected an array, found {_kind(value)}")
    return [item(v, f"{what}[{i}]") for i, v in enumerate(value)]


def _required(obj: dict, key: str, what: str, read: Callable[[Any, str], _T]) -> _T:
    if key not in obj:
        raise DecodeError(f"missing field `{what}{key}`")
    return read(obj[key], f"{what}{key}")


def _optional(obj: dict, key: str, what: str, read: Callable[[Any, str], _T]) -> Optional[_T]:
    value = obj.get(key)
    return None if value is None else read(value, f"{what}{key}")


def _defaulted(obj: dict, key: str, what: str, read: Callable[[Any, str], _T], default: _T) -> _T:
    return read(obj[key], f"{what}{key}") if key in obj else default


def _decode(event: Event, read: Callable[[Any], _T]) -> _T:
    try:
        value = json.loads(event.payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise Fatal(f"undecodable payload: {error}") from None
    try:
        return read(value)
    except DecodeError as error:
        raise Fatal(f"undecodable payload: {error}") from None


def _put(out: dict, key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


# --- the types --------------------------------------------------------------------------


@dataclass
class Recurrence:
    """How a task repeats. The first occurrence is the task's own ``due_date``."""

    #: The unit the rule steps in: ``daily``, ``weekly`` or ``monthly``.
    frequency: str
    #: Step by this many units (every 2 weeks: ``weekly`` with interval 2). At least 1.
    interval: int = 1
    #: ``weekly`` only: the days the task falls on (``mon`` ... ``sun``); empty: the weekday
    #: of the due date.
    weekdays: list[str] = field(default_factory=list)
    #: ``monthly`` only: the day of the month (1-31), clamped to each month's length.
    day_of_month: Optional[int] = None
    #: The last day an occurrence may fall on (inclusive).
    until: Optional[date] = None
    #: The total number of occurrences, the first one included.
    count: Optional[int] = None

    @classmethod
    def from_json(cls, value: Any, what: str = "recurrence") -> "Recurrence":
        obj = _object(value, what)
        p = f"{what}."
        frequency = _required(obj, "frequency", p, _string)
        if frequency not in FREQUENCIES:
            raise DecodeError(
                f"{p}frequency: unknown variant `{frequency}`, expected one of {', '.join(FREQUENCIES)}"
            )
        return cls(
            frequency=frequency,
            interval=_defaulted(obj, "interval", p, _u32, 1),
            weekdays=_defaulted(obj, "weekdays", p, lambda v, w: _list(v, w, _weekday), []),
            day_of_month=_optional(obj, "day_of_month", p, _u32),
            until=_optional(obj, "until", p, _date),
            count=_optional(obj, "count", p, _u32),
        )

    def to_json(self) -> dict:
        out: dict = {"frequency": self.frequency, "interval": self.interval}
        if self.weekdays:
            out["weekdays"] = list(self.weekdays)
        _put(out, "day_of_month", self.day_of_month)
        _put(out, "until", None if self.until is None else self.until.isoformat())
        _put(out, "count", self.count)
        return out


def _weekday(value: Any, what: str) -> str:
    day = _string(value, what)
    if day not in WEEKDAYS:
        raise DecodeError(f"{what}: unknown variant `{day}`, expected one of {', '.join(WEEKDAYS)}")
    return day


@dataclass
class TaskData:
    """The fields of a task."""

    #: Short title, e.g. ``Buy milk``.
    title: str
    #: Longer free text.
    description: Optional[str] = None
    #: The day the task is due; required for a recurring task.
    due_date: Optional[date] = None
    #: Priority as the task app names it (``low``, ``medium``, ``high``, ...).
    priority: Optional[str] = None
    #: Free-form labels.
    tags: list[str] = field(default_factory=list)
    #: Whether the task is done.
    completed: bool = False
    #: The rule that repeats this task; absent for a one-off task.
    recurrence: Optional[Recurrence] = None
    #: The series a recurring task belongs to: the task id of its first occurrence.
    series_id: Optional[str] = None
    #: Which occurrence of its series this task is, counting from 1; absent means 1.
    occurrence: Optional[int] = None

    @classmethod
    def from_json(cls, value: Any, what: str = "task") -> "TaskData":
        obj = _object(value, what)
        p = f"{what}."
        return cls(
            title=_required(obj, "title", p, _string),
            description=_optional(obj, "description", p, _string),
            due_date=_optional(obj, "due_date", p, _date),
            priority=_optional(obj, "priority", p, _string),
            tags=_defaulted(obj, "tags", p, lambda v, w: _list(v, w, _string), []),
            completed=_defaulted(obj, "completed", p, _bool, False),
            recurrence=_optional(obj, "recurrence", p, Recurrence.from_json),
            series_id=_optional(obj, "series_id", p, _string),
            occurrence=_optional(obj, "occurrence", p, _u32),
        )

    def to_json(self) -> dict:
        out: dict = {"title": self.title}
        _put(out, "description", self.description)
        _put(out, "due_date", None if self.due_date is None else self.due_date.isoformat())
        _put(out, "priority", self.priority)
        out["tags"] = list(self.tags)
        out["completed"] = self.completed
        _put(out, "recurrence", None if self.recurrence is None else self.recurrence.to_json())
        _put(out, "series_id", self.series_id)
        _put(out, "occurrence", self.occurrence)
        return out

    def encode(self) -> str:
        """Compact JSON, field for field what the Rust SDK writes."""
        return compact_json(self.to_json())


@dataclass
class TaskEvent:
    """A change to a task, as the task app publishes it (topics ``task-events``,
    ``task-updates``)."""

    #: ``event_type`` of a new task.
    CREATED = "task.created"
    #: ``event_type`` of a task whose fields changed.
    UPDATED = "task.updated"
    #: ``event_type`` of a task marked done.
    COMPLETED = "task.completed"
    #: ``event_type`` of a removed task.
    DELETED = "task.deleted"

    #: The event's own id; the host uses it to deduplicate.
    event_id: str
    #: What happened: one of the constants above; other values are passed through.
    event_type: str
    #: The task the event is about.
    task_id: str
    #: The user who owns the task.
    user_id: str
    #: The task as it is after the change (for ``task.deleted``, as it was).
    task: TaskData
    #: When the change happened.
    timestamp: Instant

    @classmethod
    def from_json(cls, value: Any) -> "TaskEvent":
        obj = _object(value, "the task event")
        return cls(
            event_id=_required(obj, "event_id", "", _string),
            event_type=_required(obj, "event_type", "", _string),
            task_id=_required(obj, "task_id", "", _string),
            user_id=_required(obj, "user_id", "", _string),
            task=_required(obj, "task", "", TaskData.from_json),
            timestamp=_required(obj, "timestamp", "", _instant),
        )

    @classmethod
    def from_event(cls, event: Event) -> "TaskEvent":
        """The task event in ``event``'s payload; :class:`~kasm_guest.Fatal` if it is not one."""
        return _decode(event, cls.from_json)

    def to_json(self) -> dict:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "task_id": self.task_id,
            "user_id": self.user_id,
            "task": self.task.to_json(),
            "timestamp": self.timestamp.rfc3339(),
        }

    def encode(self) -> str:
        """Compact JSON, field for field what the Rust SDK writes."""
        return compact_json(self.to_json())

    def copy(self, **changes: Any) -> "TaskEvent":
        """This event with ``changes`` applied (a new object; this one is unchanged)."""
        return replace(self, **changes)


@dataclass
class Reminder:
    """A request to remind a user of a task (topic ``reminders``)."""

    #: The reminder's own id; becomes the notification's idempotency key.
    event_id: str
    #: The task to remind of.
    task_id: str
    #: The user to remind.
    user_id: str
    #: The task's title, shown in the notification.
    title: str
    #: When the task is due.
    due_at: Instant
    #: When the reminder should go out; not after ``due_at``.
    remind_at: Instant
    #: Where to send it (``push``, ``email``, ...); absent means ``push``.
    channel: Optional[str] = None

    @classmethod
    def from_json(cls, value: Any) -> "Reminder":
        obj = _object(value, "the reminder")
        return cls(
            event_id=_required(obj, "event_id", "", _string),
            task_id=_required(obj, "task_id", "", _string),
            user_id=_required(obj, "user_id", "", _string),
            title=_required(obj, "title", "", _string),
            due_at=_required(obj, "due_at", "", _instant),
            remind_at=_required(obj, "remind_at", "", _instant),
            channel=_optional(obj, "channel", "", _string),
        )

    @classmethod
    def from_event(cls, event: Event) -> "Reminder":
        """The reminder in ``event``'s payload; :class:`~kasm_guest.Fatal` if it is not one."""
        return _decode(event, cls.from_json)


@dataclass
class Notification:
    """A notification ready to be delivered to a user."""

    #: The id of the reminder it comes from; a delivery service sends each key at most once.
    idempotency_key: str
    #: The recipient.
    user_id: str
    #: The delivery channel (``push``, ``email``, ...).
    channel: str
    #: The headline, the task's title.
    title: str
    #: The text, e.g. ``"Buy milk" is due at 2026-11-27 09:00 UTC``.
    body: str
    #: The task it is about, for a deep link.
    task_id: str
    #: When the task is due.
    due_at: Instant

    def to_json(self) -> dict:
        return {
            "idempotency_key": self.idempotency_key,
            "user_id": self.user_id,
            "channel": self.channel,
            "title": self.title,
            "body": self.body,
            "task_id": self.task_id,
            "due_at": self.due_at.rfc3339(),
        }

    def encode(self) -> str:
        """Compact JSON, field for field what the Rust SDK writes."""
        return compact_json(self.to_json())


@dataclass
class AuditEntry:
    """One line of the audit log: who did what to which task, when."""

    #: The id of the task event recorded; an audit store can deduplicate on it.
    event_id: str
    #: The task event's ``event_type``, as received.
    event_type: str
    #: The task concerned.
    task_id: str
    #: The user who owns the task and made the change.
    user_id: str
    #: When the change happened (the task event's timestamp).
    occurred_at: Instant
    #: A line for humans, e.g. ``task "Buy milk" completed by user u1``.
    summary: str
    #: The task's fields as the event carried them.
    task: TaskData

    def to_json(self) -> dict:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "task_id": self.task_id,
            "user_id": self.user_id,
            "occurred_at": self.occurred_at.rfc3339(),
            "summary": self.summary,
            "task": self.task.to_json(),
        }


@dataclass
class LiveUpdate:
    """A change pushed to a user's open clients."""

    #: The fan-out channel, ``user:<user_id>``.
    channel: str
    #: The task event's ``event_type``.
    event_type: str
    #: The task concerned.
    task_id: str
    #: The task's fields after the change (as it was, for ``task.deleted``).
    task: TaskData
    #: When the change happened.
    at: Instant

    def to_json(self) -> dict:
        return {
            "channel": self.channel,
            "event_type": self.event_type,
            "task_id": self.task_id,
            "task": self.task.to_json(),
            "at": self.at.rfc3339(),
        }
