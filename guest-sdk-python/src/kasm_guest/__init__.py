"""Write kasm handlers in Python: a plain function plus one decorator.

kasm consumes Kafka and runs each record through a handler, a WebAssembly component that
implements the ``kasm:handler`` world. This package hides the generated bindings behind a
small API::

    from kasm_guest import Event, Fatal, handler, log, publish_json

    @handler
    def handle(event: Event) -> None:
        order = event.json()              # Fatal("undecodable payload: ...") if not JSON
        if "order_id" not in order:
            raise Fatal("no order_id")
        publish_json("orders-seen", order, key=event.key)
        log.info(f"order {order['order_id']} seen")

- :class:`Event` is the record the host hands over.
- :class:`Retryable` and :class:`Fatal` tell the host what to do with a failed record
  (retry with backoff then dead-letter, or dead-letter at once); any other exception traps.
- :func:`publish`, :func:`publish_json`, :func:`next_event_id` and the modules :mod:`kv`,
  :mod:`sql`, :mod:`websocket`, :mod:`http`, :mod:`settings` and :mod:`log` call the host
  capabilities. Publishes, SQL writes, kv writes and pushes are effects of the call: the
  host applies them only after the handler returns without raising.
- :mod:`kasm_guest.taskapp` holds the task app's event types.

``kasm-py build`` makes the component. A component can import nothing after it is built
(componentize-py snapshots the interpreter with every module already imported), so import
everything the handler uses at the top of its module, never inside a function.

The capability functions work only inside a component; called natively (a unit test), they
raise :class:`CapabilityError`. Keep business logic in plain functions and test those.
"""

from __future__ import annotations

from . import http, kv, log, settings, sql, websocket
from ._handler import handler
from .errors import CapabilityError, Fatal, HandlerError, Retryable
from .event import Event
from .producer import next_event_id, publish, publish_json

__all__ = [
    "Event",
    "HandlerError",
    "Retryable",
    "Fatal",
    "CapabilityError",
    "handler",
    "publish",
    "publish_json",
    "next_event_id",
    "http",
    "kv",
    "log",
    "settings",
    "sql",
    "websocket",
]

__version__ = "0.1.0"
