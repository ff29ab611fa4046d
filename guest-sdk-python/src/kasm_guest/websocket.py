"""Live pushes to the host's WebSocket clients: the ``websocket`` capability.

A client connects to the host's ``GET /ws`` with one channel (for the task app,
``user:<user_id>``) and a token for it; a handler pushes a message to every client of a
channel. Pushes are effects of the call like publishes: the host delivers them only after the
handler returns. Delivery is best effort: a client that is not connected, or too slow to keep
up, misses the message.
"""

from __future__ import annotations

from typing import Any

from . import _bindings
from ._codec import compact_json
from .errors import Fatal

__all__ = ["broadcast", "broadcast_json"]

_websocket = _bindings.interface("websocket")
_err = _bindings.result_error()


def broadcast(channel: str, message: str) -> None:
    """Queue ``message`` (text, usually JSON) for every client of ``channel``.

    A refusal is :class:`~kasm_guest.Fatal`: the host refuses only when the channel is not a
    channel name (1-200 characters of letters, digits, ``:._-``), the message is over the
    size limit, or the call pushed more than its limit, none of which a retry changes.
    """
    if _websocket is None:
        raise _bindings.missing("websocket")
    try:
        _websocket.broadcast(channel, message)
    except _err as refusal:
        raise Fatal(f"push to {channel} refused: {refusal.value}") from None


def broadcast_json(channel: str, value: Any) -> None:
    """Serialize ``value`` as compact JSON and :func:`broadcast` it to ``channel``."""
    try:
        text = compact_json(value)
    except (TypeError, ValueError) as error:
        raise Fatal(f"encoding the push to {channel}: {error}") from None
    broadcast(channel, text)
