"""Bytes and JSON the way the capabilities take them."""

from __future__ import annotations

import json
from typing import Any


def to_bytes(value: bytes | bytearray | memoryview | str, what: str) -> bytes:
    """``value`` as bytes: text is encoded as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def compact_json(value: Any) -> str:
    """``value`` as compact JSON (no spaces, non-ASCII kept), the form the Rust SDK writes.

    NaN and infinities are refused: they are not JSON.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
