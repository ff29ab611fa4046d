"""The handler's settings: values the operator put under ``settings`` for this handler in
``kasm.toml`` (a webhook URL, a channel prefix). Always granted; never secrets.

::

    from kasm_guest import settings

    url = settings.require("webhook_url")
"""

from __future__ import annotations

from typing import Optional

from . import _bindings
from .errors import Fatal

__all__ = ["get", "require"]

_settings = _bindings.interface("settings")


def get(key: str) -> Optional[str]:
    """The value configured for ``key``, if any."""
    if _settings is None:
        raise _bindings.missing("settings")
    return _settings.get(key)


def require(key: str) -> str:
    """The value of ``key``; a missing setting is :class:`~kasm_guest.Fatal` (the
    configuration is wrong, and retrying the record will not fix it)."""
    value = get(key)
    if value is None:
        raise Fatal(
            f"setting `{key}` is not configured for this handler (settings in kasm.toml)"
        )
    return value
