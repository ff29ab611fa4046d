"""The record a handler receives."""

from __future__ import annotations

import json as _json
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

from .errors import Fatal

__all__ = ["Event"]


class Event:
    """One Kafka record, as the host hands it to a handler.

    The host has decided the record's identity (:attr:`id`) before the handler runs: the
    record header ``event-id`` when present, else the top-level JSON field ``event_id`` of
    the payload, else ``<topic>/<partition>/<offset>``. The id is stable across
    redeliveries, so it is the idempotency key for anything the handler does.

    A test builds one with only what it needs: ``Event("e-1", "orders", b'{"n": 1}')``,
    partition 0, offset 0, no key, no headers, no timestamp, attempt 1 unless given.
    """

    __slots__ = (
        "id",
        "topic",
        "partition",
        "offset",
        "key",
        "payload",
        "headers",
        "timestamp_ms",
        "attempt",
    )

    #: The event id: stable across redeliveries of the same record, the idempotency key.
    id: str
    #: The topic the record was consumed from.
    topic: str
    #: The partition the record was consumed from.
    partition: int
    #: The record's offset within its partition.
    offset: int
    #: The record key, if the producer set one.
    key: Optional[bytes]
    #: The record value, byte for byte as produced. Empty for a tombstone.
    payload: bytes
    #: The record headers, in producer order. A name may repeat.
    headers: list[tuple[str, bytes]]
    #: The record timestamp in milliseconds since the Unix epoch, if the broker has one.
    timestamp_ms: Optional[int]
    #: Which attempt this is: 1 on first delivery, 2 on the first retry, ... Use it to
    #: degrade gracefully, never to decide whether an effect was already applied.
    attempt: int

    def __init__(
        self,
        id: str,
        topic: str,
        payload: bytes | str = b"",
        *,
        partition: int = 0,
        offset: int = 0,
        key: bytes | str | None = None,
        headers: Iterable[tuple[str, bytes | str]] = (),
        timestamp_ms: Optional[int] = None,
        attempt: int = 1,
    ) -> None:
        self.id = id
        self.topic = topic
        self.payload = _bytes(payload)
        self.partition = partition
        self.offset = offset
        self.key = None if key is None else _bytes(key)
        self.headers = [(name, _bytes(value)) for name, value in headers]
        self.timestamp_ms = timestamp_ms
        self.attempt = attempt

    @classmethod
    def _from_wit(cls, raw: Any) -> "Event":
        # The generated record, taken over without copying the payload.
        event = cls.__new__(cls)
        event.id = raw.id
        event.topic = raw.topic
        event.partition = raw.partition
        event.offset = raw.offset
        event.key = raw.key
        event.payload = raw.payload
        event.headers = raw.headers
        event.timestamp_ms = raw.timestamp_ms
        event.attempt = raw.attempt
        return event

    @property
    def key_str(self) -> Optional[str]:
        """The record key as text; ``None`` if there is no key or it is not UTF-8."""
        return _text(self.key)

    def header(self, name: str) -> Optional[bytes]:
        """The value of header ``name`` (compared exactly, case-sensitive).

        Kafka allows a name to repeat; like Kafka's ``lastHeader``, this returns the last
        one. :attr:`headers` has all of them.
        """
        for header, value in reversed(self.headers):
            if header == name:
                return value
        return None

    def header_str(self, name: str) -> Optional[str]:
        """The value of header ``name`` as text; ``None`` if absent or not UTF-8."""
        return _text(self.header(name))

    @property
    def timestamp(self) -> Optional[datetime]:
        """The record timestamp as an aware UTC datetime, if the broker has one."""
        if self.timestamp_ms is None:
            return None
        try:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None

    def text(self) -> str:
        """The payload as UTF-8 text; a payload that is not UTF-8 is :class:`Fatal`."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Fatal(f"undecodable payload: not UTF-8: {error}") from None

    def json(self) -> Any:
        """The payload decoded as JSON (dicts, lists, str, int, float, bool, None).

        A payload that does not decode will not decode on a retry either, so the error is
        :class:`Fatal`, with the message ``undecodable payload: <reason>``.
        """
        try:
            return _json.loads(self.payload)
        except (ValueError, UnicodeDecodeError) as error:
            raise Fatal(f"undecodable payload: {error}") from None

    def __repr__(self) -> str:
        return (
            f"Event(id={self.id!r}, topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, key={self.key!r}, payload=<{len(self.payload)} bytes>, "
            f"attempt={self.attempt})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)


def _bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _text(value: Optional[bytes]) -> Optional[str]:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None
