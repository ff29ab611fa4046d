"""Log into the host's structured log: one function per level.

The host tags every line with the handler name and the record's topic, partition, offset and
event id, so a message only says what happened. Logging is always granted. Lines over the
host's length limit are truncated; past the host's per-call line limit the rest are dropped
(and counted). Use this instead of ``print``: what a handler prints is kept only when it
traps.

::

    from kasm_guest import log

    log.info("reminder sent")
"""

from __future__ import annotations

from . import _bindings

__all__ = ["trace", "debug", "info", "warn", "error"]

_log = _bindings.interface("log")
_types = _bindings.interface("types")


def _write(level: str, message: str) -> None:
    if _log is None or _types is None:
        raise _bindings.missing("log")
    _log.log(getattr(_types.Level, level), str(message))


def trace(message: str) -> None:
    """Log at ``trace`` level."""
    _write("TRACE", message)


def debug(message: str) -> None:
    """Log at ``debug`` level."""
    _write("DEBUG", message)


def info(message: str) -> None:
    """Log at ``info`` level."""
    _write("INFO", message)


def warn(message: str) -> None:
    """Log at ``warn`` level."""
    _write("WARN", message)


def error(message: str) -> None:
    """Log at ``error`` level."""
    _write("ERROR", message)
