"""The one handler of a component, and the call the component's export makes into it."""

from __future__ import annotations

from typing import Any, Callable, Optional

from .errors import HandlerError, Retryable
from .event import Event

Handler = Callable[[Event], None]

_registered: Optional[Handler] = None


def handler(function: Handler) -> Handler:
    """Make ``function`` the component's handler: the host calls it once per record.

    ``function`` takes an :class:`~kasm_guest.Event` and returns nothing when the event is
    done. It raises :class:`~kasm_guest.Retryable` or :class:`~kasm_guest.Fatal` to have the
    record retried or dead-lettered; any other exception traps the component (the record is
    dead-lettered as ``trap``, with the traceback). A component has exactly one handler. The
    function is returned unchanged, so tests call it directly.
    """
    global _registered
    if not callable(function):
        raise TypeError(f"@handler needs a function, not {type(function).__name__}")
    if _registered is not None and _registered is not function:
        raise RuntimeError(
            f"a component has one handler: {_name(_registered)} is already registered, "
            f"so {_name(function)} cannot be"
        )
    _registered = function
    return function


def registered() -> Optional[Handler]:
    """The function registered with :func:`handler`, if any."""
    return _registered


def _name(function: Any) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"


def call(raw: Any, fatal: Callable[[str], Any], retryable: Callable[[str], Any], err: type) -> None:
    """Run the registered handler on the host's record ``raw``.

    A :class:`~kasm_guest.HandlerError` is raised as the bindings' ``err`` carrying the WIT
    ``handler-error`` case (``fatal`` or ``retryable``), which is how componentize-py returns
    the error side of ``handle``'s result. Any other exception is a bug and passes through:
    componentize-py prints its traceback to stderr and traps (``unreachable``), and the host
    puts the trap and the guest's stderr, traceback included, in the dead letter.
    """
    function = _registered
    if function is None:
        raise RuntimeError("no handler registered (decorate the handler function with @handler)")
    try:
        function(Event._from_wit(raw))
    except HandlerError as error:
        case = retryable if isinstance(error, Retryable) else fatal
        raise err(case(error.message)) from None
