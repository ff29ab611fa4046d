"""Why a handler did not finish an event, and how it reaches the host.

Raise :class:`Retryable` or :class:`Fatal` from a handler (or let one propagate from a
capability call): the SDK turns it into the WIT ``handler-error`` the host decides on. Pick
the class by asking "would trying again, unchanged, possibly succeed?".

Any other exception that leaves the handler is a bug, not an outcome: it traps the component
(componentize-py prints its traceback to stderr first), and the host dead-letters the record
as ``trap`` with that traceback in the message.
"""

from __future__ import annotations

__all__ = ["HandlerError", "Retryable", "Fatal", "CapabilityError"]


class HandlerError(Exception):
    """A failure the handler reports to the host. Raise :class:`Retryable` or :class:`Fatal`."""

    #: The case of the WIT ``handler-error``: ``"retryable"`` or ``"fatal"``.
    kind: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: The message, as the host records it (the ``kasm-dlq-error-message`` header).
        self.message = str(message)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class Retryable(HandlerError):
    """A transient failure (a dependency timed out, a rate limit, a store that is down).

    The host retries the same record with exponential backoff and jitter, up to the
    handler's retry policy, then dead-letters it as ``retries-exhausted``. The partition
    waits meanwhile, so ordering within the partition is kept.
    """

    kind = "retryable"


class Fatal(HandlerError):
    """A deterministic failure (the event is invalid, a business rule refuses it).

    The host dead-letters the record at once with error kind ``fatal`` and this message.
    """

    kind = "fatal"


class CapabilityError(RuntimeError):
    """A capability was called that this component cannot reach.

    Either the code runs outside a component (a native unit test), or the component was
    built without the capability (it is missing from ``[tool.kasm] capabilities``). Not a
    :class:`HandlerError`: inside a component it traps, because the build, not the record,
    is wrong.
    """
