"""A small key-value store private to the handler: the ``kv`` capability.

Keys live in the handler's own namespace, so two handlers never see each other's data.
Values are bytes (text is stored as UTF-8). Writes are kept only if the handler returns
without raising (the host applies them with the call's batch); a call reads its own writes.

A failure of the store is :class:`~kasm_guest.Retryable`: the host's store being unavailable
is the common cause, and the retry policy still dead-letters the record if it never
recovers. Catch it and raise :class:`~kasm_guest.Fatal` yourself where a retry cannot help.

::

    from kasm_guest import kv

    kv.set("last-seen", "2026-11-27", ttl_ms=86_400_000)
    if (value := kv.get("last-seen")) is not None:
        ...
    kv.delete("last-seen")
"""

from __future__ import annotations

import json
from typing import Optional

from . import _bindings
from ._codec import to_bytes
from .errors import Retryable

__all__ = ["get", "get_str", "set", "delete"]

_kv = _bindings.interface("kv")
_err = _bindings.result_error()


def get(key: str) -> Optional[bytes]:
    """The value stored under ``key``, or ``None`` if absent or expired."""
    if _kv is None:
        raise _bindings.missing("kv")
    try:
        return _kv.get(key)
    except _err as error:
        raise _failed("get", key, error.value) from None


def get_str(key: str) -> Optional[str]:
    """The value stored under ``key`` as text (decoded as UTF-8, invalid bytes replaced)."""
    value = get(key)
    return None if value is None else value.decode("utf-8", errors="replace")


def set(key: str, value: bytes | str, ttl_ms: Optional[int] = None) -> None:
    """Store ``value`` under ``key``, replacing what was there. With ``ttl_ms``, the entry
    expires that many milliseconds from now."""
    if _kv is None:
        raise _bindings.missing("kv")
    try:
        _kv.set(key, to_bytes(value, "a kv value"), ttl_ms)
    except _err as error:
        raise _failed("set", key, error.value) from None


def delete(key: str) -> bool:
    """Remove ``key``. Returns whether it was present."""
    if _kv is None:
        raise _bindings.missing("kv")
    try:
        return _kv.delete(key)
    except _err as error:
        raise _failed("delete", key, error.value) from None


def _failed(operation: str, key: str, reason: str) -> Retryable:
    return Retryable(f"kv {operation} {json.dumps(key)} failed: {reason}")
