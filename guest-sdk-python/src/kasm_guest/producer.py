"""Publishing records: the ``producer`` capability.

Nothing is sent during the call: the host sends the handler's publishes (with ``acks=all``)
only after the handler returns, and sends none of them if it raises, traps or times out. The
host adds an ``event-id`` header derived from the source event id, the handler name and the
index of the publish within the call, so a re-run of the same event publishes the same ids
and downstream deduplication drops the repeats.

A refusal is :class:`~kasm_guest.Fatal`: the host refuses a publish only when the topic is
not granted to the handler, the record is over the size limit, or the call has published
more records than its limit allows, and none of these changes on a retry.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from . import _bindings
from ._codec import compact_json, to_bytes
from .errors import Fatal

__all__ = ["publish", "publish_json", "next_event_id"]

_producer = _bindings.interface("producer")
_err = _bindings.result_error()


def publish(
    topic: str,
    payload: bytes | str,
    *,
    key: bytes | str | None = None,
    headers: Iterable[tuple[str, bytes | str]] = (),
) -> str:
    """Queue a record for ``topic``; returns the ``event-id`` the host gives it.

    ``payload``, ``key`` and header values are bytes, or text sent as UTF-8.
    """
    if _producer is None:
        raise _bindings.missing("producer")
    raw_headers = [(name, to_bytes(value, "a header value")) for name, value in headers]
    raw_key = None if key is None else to_bytes(key, "the key")
    try:
        return _producer.publish(topic, raw_key, to_bytes(payload, "the payload"), raw_headers)
    except _err as refusal:
        raise Fatal(f"publish to {topic} refused: {refusal.value}") from None


def publish_json(topic: str, value: Any, *, key: bytes | str | None = None) -> str:
    """Serialize ``value`` as compact JSON and :func:`publish` it to ``topic``, without headers.

    A value that is not JSON (a set, an object, NaN) is :class:`~kasm_guest.Fatal`, like a
    refusal.
    """
    try:
        payload = compact_json(value)
    except (TypeError, ValueError) as error:
        raise Fatal(f"cannot encode the record for {topic} as JSON: {error}") from None
    return publish(topic, payload, key=key)


def next_event_id() -> str:
    """The ``event-id`` the next :func:`publish` of this call will carry, so a handler can put
    its output's id inside the payload as well as in the header."""
    if _producer is None:
        raise _bindings.missing("producer")
    return _producer.next_event_id()
