"""The component's export, the one module that needs the generated bindings to exist.

``kasm-py build`` generates the app module componentize-py wraps: it imports the author's
handler module (which registers its function with ``@handler``) and then this class, the
implementation of the world's ``handle`` export.
"""

from __future__ import annotations

from typing import Any

from componentize_py_types import Err
from kasm_world import KasmWorld as _World
from kasm_world.imports import types as _types

from . import _handler


class KasmWorld(_World):
    """``handle``: the host's record in, ``None`` or ``Err(handler-error)`` out."""

    def handle(self, e: Any) -> None:
        _handler.call(e, _types.HandlerError_Fatal, _types.HandlerError_Retryable, Err)
