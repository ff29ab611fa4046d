"""Outbound HTTP: ``wasi:http/outgoing-handler``, to the hosts the operator granted.

A request to a host that is not granted is refused by kasm before any connection is made
(:class:`Denied`). Requests are bounded in time by the host (connect, first byte, between
bytes: the handler's deadline) and responses in size here (:data:`MAX_RESPONSE_BYTES`).

::

    from kasm_guest import http

    response = http.post(
        "http://hooks.internal:8080/notify",
        b'{"text":"hello"}',
        headers={"content-type": "application/json", "idempotency-key": event.id},
    )
    response.error_for_status()   # 5xx, 408, 429: Retryable; other 4xx: Fatal

Every error here is a :class:`~kasm_guest.HandlerError`, so letting it propagate gives the
right outcome: a denied host or an invalid request is :class:`~kasm_guest.Fatal`; a timeout
or a connection failure is :class:`~kasm_guest.Retryable`.
"""

from __future__ import annotations

import json as _json
from typing import Any, Iterable, Mapping, Optional, Union

from . import _bindings
from ._codec import to_bytes
from .errors import Fatal, HandlerError, Retryable

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Response",
    "HttpError",
    "Denied",
    "Invalid",
    "Timeout",
    "Failed",
    "send",
    "get",
    "post",
    "split_url",
]

#: The largest response body read; a larger one is :class:`Failed`.
MAX_RESPONSE_BYTES = 1 << 20

Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]

_types = _bindings.interface("http_types")
_handler = _bindings.interface("outgoing_handler")
_streams = _bindings.interface("streams")
_err = _bindings.result_error()


class HttpError(HandlerError):
    """Why a request did not produce a response."""


class Denied(HttpError, Fatal):
    """The host is not granted to this handler: no connection was made."""

    def __init__(self, message: str) -> None:
        super().__init__(f"request denied: {message}")


class Invalid(HttpError, Fatal):
    """The URL, a header or the method is not valid."""

    def __init__(self, message: str) -> None:
        super().__init__(f"invalid request: {message}")


class Timeout(HttpError, Retryable):
    """Connecting or waiting for the response took too long."""

    def __init__(self, message: str) -> None:
        super().__init__(f"timed out: {message}")


class Failed(HttpError, Retryable):
    """The connection failed or broke (refused, reset, DNS, TLS, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"request failed: {message}")


class Response:
    """An HTTP response, read whole."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[str, bytes]], body: bytes) -> None:
        #: Status code.
        self.status = status
        #: Headers, in order (names lowercase).
        self.headers = headers
        #: The body.
        self.body = body

    def header(self, name: str) -> Optional[str]:
        """The first header named ``name`` (case-insensitive), as text."""
        wanted = name.lower()
        for header, value in self.headers:
            if header.lower() == wanted:
                return value.decode("utf-8", errors="replace")
        return None

    def text(self) -> str:
        """The body as text (UTF-8, invalid bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body decoded as JSON; a body that is not JSON is :class:`~kasm_guest.Fatal`."""
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as error:
            raise Fatal(f"HTTP {self.status}: the response is not JSON: {error}") from None

    def error_for_status(self) -> "Response":
        """This response if its status is 2xx or 3xx; otherwise raise the error a handler
        should end with: :class:`~kasm_guest.Retryable` for 5xx, 429 and 408,
        :class:`~kasm_guest.Fatal` for the other 4xx."""
        if 200 <= self.status <= 399:
            return self
        text = f"HTTP {self.status}: {self.text()[:200]}"
        if self.status in (408, 429) or 500 <= self.status <= 599:
            raise Retryable(text)
        raise Fatal(text)

    def __repr__(self) -> str:
        return f"Response(status={self.status}, body=<{len(self.body)} bytes>)"


def post(url: str, body: bytes | str = b"", headers: Headers = ()) -> Response:
    """``POST url`` with ``body`` (text is sent as UTF-8) and ``headers``."""
    return send("POST", url, headers, body)


def get(url: str, headers: Headers = ()) -> Response:
    """``GET url`` with ``headers``."""
    return send("GET", url, headers, b"")


def split_url(url: str) -> tuple[bool, str, str]:
    """The parts of an ``http://`` or ``https://`` URL: (https?, authority, path with query)."""
    if url.startswith("https://"):
        https, rest = True, url[len("https://") :]
    elif url.startswith("http://"):
        https, rest = False, url[len("http://") :]
    else:
        raise Invalid(f"`{url}`: only http:// and https:// URLs")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=-1)
    authority, path = (rest, "/") if cut < 0 else (rest[:cut], rest[cut:])
    if not authority or "@" in authority:
        raise Invalid(f"`{url}`: no host, or a user in it")
    return https, authority, path


def send(method: str, url: str, headers: Headers = (), body: bytes | str = b"") -> Response:
    """Send a request with any method and read the whole response."""
    https, authority, path = split_url(url)
    if _types is None or _handler is None or _streams is None:
        raise _bindings.missing("http")
    payload = to_bytes(body, "the body")
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    entries = [(name.lower(), to_bytes(value, "a header value")) for name, value in pairs]
    # A known length: the body goes out in one piece, not chunked.
    if payload and not any(name == "content-length" for name, _ in entries):
        entries.append(("content-length", str(len(payload)).encode()))
    return _exchange(method, https, authority, path, entries, payload)


def _method(name: str) -> Any:
    assert _types is not None
    known = {
        "GET": _types.Method_Get,
        "HEAD": _types.Method_Head,
        "POST": _types.Method_Post,
        "PUT": _types.Method_Put,
        "DELETE": _types.Method_Delete,
        "PATCH": _types.Method_Patch,
        "OPTIONS": _types.Method_Options,
    }
    upper = name.upper()
    return known[upper]() if upper in known else _types.Method_Other(upper)


def _error(code: Any) -> HttpError:
    # The generated cases are classes named ErrorCode_<Case>.
    case = type(code).__name__.removeprefix("ErrorCode_")
    if case == "HttpRequestDenied":
        return Denied("the host is not granted to this handler")
    if case in ("ConnectionTimeout", "ConnectionReadTimeout", "ConnectionWriteTimeout", "DnsTimeout"):
        return Timeout(case)
    if case in ("HttpRequestMethodInvalid", "HttpRequestUriInvalid", "HttpRequestUriTooLong"):
        return Invalid(case)
    detail = getattr(code, "value", None)
    return Failed(case if detail is None else f"{case}({detail})")


def _exchange(
    method: str,
    https: bool,
    authority: str,
    path: str,
    entries: list[tuple[str, bytes]],
    payload: bytes,
) -> Response:
    assert _types is not None and _handler is not None and _streams is not None
    try:
        fields = _types.Fields.from_list(entries)
    except _err as error:
        raise Invalid(f"headers: {type(error.value).__name__.removeprefix('HeaderError_')}") from None
    request = _types.OutgoingRequest(fields)

    def setting(what: str, call: Any, value: Any) -> None:
        try:
            call(value)
        except _err:
            raise Invalid(what) from None

    setting("method", request.set_method, _method(method))
    setting("scheme", request.set_scheme, _types.Scheme_Https() if https else _types.Scheme_Http())
    setting("authority", request.set_authority, authority)
    setting("path", request.set_path_with_query, path)
    try:
        outgoing = request.body()
    except _err:
        raise Invalid("body taken twice") from None
    # Start the request first: the host consumes the body while it is written.
    try:
        pending = _handler.handle(request, None)
    except _err as error:
        raise _error(error.value) from None

    written: Optional[HttpError] = None
    try:
        with outgoing.write() as stream:
            for start in range(0, len(payload), 4096):
                stream.blocking_write_and_flush(payload[start : start + 4096])
    except _err as error:
        written = Failed(f"writing the body: {type(error.value).__name__}")
    finished: Optional[HttpError] = None
    try:
        _types.OutgoingBody.finish(outgoing, None)
    except _err as error:
        finished = _error(error.value)

    # The response (or why there is none) says more than a body write that failed because
    # the request was refused or the connection dropped.
    with pending:
        while True:
            ready = pending.get()
            if ready is not None:
                break
            with pending.subscribe() as pollable:
                pollable.block()
    if isinstance(ready, _err):
        raise Failed("response taken twice")
    if isinstance(ready.value, _err):
        raise _error(ready.value.value)
    if written is not None:
        raise written
    if finished is not None:
        raise finished
    # Children before parents: the headers and the body stream go before the response.
    with ready.value.value as response:
        status = response.status()
        with response.headers() as fields:
            headers = fields.entries()
        try:
            incoming = response.consume()
        except _err:
            raise Failed("response body taken twice") from None
        body = bytearray()
        with incoming:
            try:
                stream = incoming.stream()
            except _err:
                raise Failed("response body stream") from None
            with stream:
                while True:
                    try:
                        body += stream.blocking_read(64 * 1024)
                    except _err as error:
                        if isinstance(error.value, _streams.StreamError_Closed):
                            break
                        raise Failed("reading the response") from None
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise Failed(f"response body over {MAX_RESPONSE_BYTES} bytes")
    return Response(status, headers, bytes(body))
