"""Raw ASGI primitives for the hot-path surfaces: read the body, answer bytes, stream.

The proxied surfaces are plain ASGI handlers (no framework routing or model
validation on the hot path); this module is the little they share, including the
request bounds every surface must keep: body size and arrival deadline
(`read_body`, and `BodyLimits` for the FastAPI part), JSON nesting depth,
credentials masked in errors that quote an upstream (`public_error`), and the
header size and deadline uvicorn's httptools protocol lacks (`HTTP_PROTOCOL`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from llmgate.errors import GatewayError, InvalidRequest, PayloadTooLarge, UpstreamCallerError, UpstreamError
from llmgate.logs import redact

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class RequestHeaders:
    """The few request headers the gateway reads, found in one pass."""

    __slots__ = ("anthropic_version", "content_length", "request_id", "token")

    def __init__(self, scope: Scope) -> None:
        self.token: str | None = None
        self.request_id: str | None = None
        self.content_length: int | None = None
        self.anthropic_version: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and credential.strip():
                    self.token = credential.strip()
            elif name == b"x-api-key":
                if self.token is None:
                    self.token = value.decode("latin-1").strip()
            elif name == b"x-request-id":
                rid = value.decode("latin-1")
                if 0 < len(rid) <= 128 and rid.isprintable():
                    self.request_id = rid
            elif name == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
            elif name == b"anthropic-version":
                self.anthropic_version = value.decode("latin-1")
        if self.request_id is None:
            self.request_id = new_request_id()


class _RequestIds:
    """Request ids: a random 48-bit prefix per process and a 48-bit counter, as 24 hex digits.

    os.urandom on every call is a getrandom syscall on the hot path; ids only need
    to be unique (not secret), and a fresh prefix after a fork keeps workers apart.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFF:012x}"


_request_ids = _RequestIds()
os.register_at_fork(after_in_child=_request_ids.reseed)
new_request_id = _request_ids.next


# Request bodies must arrive within this long (the default; `gateway.body_timeout_s` sets it).
BODY_TIMEOUT_S = 30.0


class BodyTimeout(GatewayError):
    """The caller sent its request body too slowly (slowloris); the connection is closed."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"connection": "close"})


class Deadlines:
    """Things that must be done within `timeout_s` of starting; `late(item)` is called for each that is not.

    Entering and leaving cost a dict operation each: items are kept oldest first
    (they share one timeout), and one timer, set for the oldest item's deadline,
    handles the late ones. Items that leave within one loop step (most) never
    wait for the timer.
    """

    __slots__ = ("_items", "_timer", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._items: dict[Any, float] = {}  # item -> deadline (monotonic), oldest first
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, item: Any) -> None:
        self._items[item] = time.monotonic() + self.timeout_s
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._sweep)

    def leave(self, item: Any) -> None:
        self._items.pop(item, None)

    def late(self, item: Any) -> None:
        raise NotImplementedError

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        items = self._items
        while items:
            item, deadline = next(iter(items.items()))
            if deadline > now:
                self._timer = asyncio.get_running_loop().call_later(deadline - now, self._sweep)
                return
            del items[item]
            self.late(item)


class _BodyDeadlines(Deadlines):
    """Cancels the tasks whose body read is late (read_body turns that into BodyTimeout)."""

    __slots__ = ("_late",)

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self._late: set[asyncio.Task[Any]] = set()

    def late(self, item: Any) -> None:
        self._late.add(item)
        item.cancel()

    def left_late(self, task: asyncio.Task[Any]) -> bool:
        """Forget `task`; True when it was cancelled for being late (the cancel is taken back)."""
        self.leave(task)
        if task not in self._late:
            return False
        self._late.discard(task)
        task.uncancel()
        return True


_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _BodyDeadlines]] = (
    weakref.WeakKeyDictionary()
)


# The last loop's watch, found without a weak-reference lookup (the one loop of a worker).
_LAST_DEADLINES: list[tuple[asyncio.AbstractEventLoop, float, _BodyDeadlines]] = []


def _deadlines(timeout_s: float) -> _BodyDeadlines:
    loop = asyncio.get_running_loop()
    if _LAST_DEADLINES:
        last_loop, last_timeout, watch = _LAST_DEADLINES[0]
        if last_loop is loop and last_timeout == timeout_s:
            return watch
    per_loop = _DEADLINES.setdefault(loop, {})
    found = per_loop.get(timeout_s)
    if found is None:
        found = per_loop[timeout_s] = _BodyDeadlines(timeout_s)
    _LAST_DEADLINES[:] = [(loop, timeout_s, found)]
    return found


async def read_body(receive: Receive, declared: int | None, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The whole request body, refusing (413) past `limit` without reading it all, and
    (408) when it has not all arrived within `timeout_s` (a slowloris client)."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit} bytes.")
    task = asyncio.current_task()
    watch = _deadlines(timeout_s)
    watch.enter(task)
    try:
        message = await receive()
        body = message.get("body", b"")
        size = len(body)
        if size > limit:  # a chunked body (no content-length) can arrive whole in one message
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        if not message.get("more_body"):
            return body
        parts = [body]
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            parts.append(chunk)
        return b"".join(parts)
    except asyncio.CancelledError:
        if watch.left_late(task):  # type: ignore[arg-type]
            raise BodyTimeout(f"The request body did not arrive within {timeout_s:g} seconds.") from None
        raise
    finally:
        watch.leave(task)


# JSON strings (their brackets are not structure), and everything but brackets.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CURLY_AS_SQUARE = bytes.maketrans(b"{}", b"[]")


def parse_json_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object, with errors that say what is wrong."""
    if not raw:
        raise InvalidRequest("The request body is empty; a JSON object is required.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc) or "depth" in str(exc):
            raise InvalidRequest(f"The request body is nested deeper than {max_depth} levels.") from None
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > max_depth and nested_deeper_than(raw, max_depth):
        raise InvalidRequest(f"The request body is nested deeper than {max_depth} levels.")
    return data


def nested_deeper_than(raw: bytes, max_depth: int) -> bool:
    """Whether valid JSON text nests deeper than `max_depth`, found on the bytes in C-speed passes:
    strings dropped, only brackets kept, then innermost `[]` pairs removed once per level.
    (Walking the parsed document would cost a Python step per value of every large body.)"""
    brackets = _JSON_STRING.sub(b"", raw) if b'"' in raw else raw
    brackets = brackets.translate(_CURLY_AS_SQUARE, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


# Set when uvicorn's httptools protocol is in use (`bounded_http_protocol`): writes a whole
# response through the request's cycle in one write, or returns False to take the ASGI way.
WholeResponseWriter = Callable[[Send, int, list[tuple[bytes, bytes]], bytes], bool]
_write_whole: WholeResponseWriter | None = None


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes = JSON,
) -> None:
    head = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]
    if _write_whole is not None and _write_whole(send, status, head, body):
        return
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class ClientDisconnected(GatewayError):
    """The caller went away before the answer was ready (nginx's 499); nothing is sent."""

    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


# A call is watched for a client disconnect once it has run this long. Watching
# costs a task; the many calls that finish sooner pay for two dict operations
# (a disconnect within this time lets at most this much upstream work finish).
WATCH_DISCONNECT_AFTER_S = 0.05


class DisconnectWatch:
    """Cancels guarded calls whose client disconnects (one per surface, on one event loop).

    `with watch.guard(receive): await work` registers the call; one shared timer
    starts a watcher task for each call that has run `after_s`. A watcher that
    sees `http.disconnect` cancels the call, and the guard raises
    ClientDisconnected instead (the cancelled upstream call closes its connection).
    Only for code that no longer reads the request body: the watcher consumes `receive`.
    """

    __slots__ = ("_pending", "_timer", "after_s")

    def __init__(self, after_s: float = WATCH_DISCONNECT_AFTER_S) -> None:
        self.after_s = after_s
        self._pending: dict[DisconnectGuard, None] = {}  # unwatched calls, oldest first
        self._timer: asyncio.TimerHandle | None = None

    def guard(self, receive: Receive) -> DisconnectGuard:
        return DisconnectGuard(self, receive)

    def _add(self, guard: DisconnectGuard) -> None:
        self._pending[guard] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.after_s, self._sweep)

    def _discard(self, guard: DisconnectGuard) -> None:
        self._pending.pop(guard, None)

    def _sweep(self) -> None:
        self._timer = None
        pending = self._pending
        started_before = time.monotonic() - self.after_s
        while pending:
            oldest = next(iter(pending))
            if oldest.since > started_before:
                delay = oldest.since - started_before
                self._timer = asyncio.get_running_loop().call_later(delay, self._sweep)
                return
            del pending[oldest]
            oldest.watch()


class DisconnectGuard:
    """One guarded call (see DisconnectWatch)."""

    __slots__ = ("_receive", "_task", "_watch", "_watcher", "gone", "since")

    def __init__(self, watch: DisconnectWatch, receive: Receive) -> None:
        self._watch = watch
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False
        self.since = 0.0

    def __enter__(self) -> DisconnectGuard:
        self._task = asyncio.current_task()
        self.since = time.monotonic()
        self._watch._add(self)
        return self

    def watch(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._cancel_on_disconnect())

    async def _cancel_on_disconnect(self) -> None:
        await _wait_disconnect(self._receive)
        self.gone = True
        assert self._task is not None
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._watch._discard(self)
        if self._watcher is not None:
            self._watcher.cancel()
        if not self.gone:
            return
        assert self._task is not None
        self._task.uncancel()
        if exc_type is asyncio.CancelledError:
            raise ClientDisconnected("The client closed the connection before the answer was ready.") from None


def public_error(err: GatewayError) -> GatewayError:
    """The error as a caller may see it: a credential an upstream echoed into its message
    (some answer 401 quoting the key they were sent) is masked. The gateway's own errors
    never hold one, so only errors carrying an upstream's words are scanned."""
    if isinstance(err, UpstreamError | UpstreamCallerError):
        err.message = redact(err.message)
    return err


def error_headers(err: GatewayError, request_id: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-request-id", request_id.encode()), *((k.encode(), v.encode()) for k, v in err.headers.items())]


async def stream_until_disconnect(
    send: Send, receive: Receive, status: int, headers: list[tuple[bytes, bytes]], body: AsyncIterator[bytes]
) -> bool:
    """Send an SSE response from `body`; stop (and close `body`) if the client goes away.

    Returns True when the whole stream was delivered. Watching `receive` is the
    only reliable way to see a disconnect: the server drops writes silently.
    """
    await send({"type": "http.response.start", "status": status, "headers": [*SSE_HEADERS, *headers]})
    producer = asyncio.ensure_future(_pump(send, body))
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait((producer, watcher), return_when=asyncio.FIRST_COMPLETED)
        if producer in done:
            producer.result()
            return True
        producer.cancel()
        try:
            await producer
        except asyncio.CancelledError:
            pass
        return False
    finally:
        watcher.cancel()
        if not producer.done():
            producer.cancel()
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


async def _pump(send: Send, body: AsyncIterator[bytes]) -> None:
    async for piece in body:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class BodyLimits:
    """Wraps an ASGI app that reads request bodies itself (the FastAPI part: admin, prompts,
    dashboard) so its bodies get the hot path's bounds: over `max_bytes` answers 413 (a
    declared length at once, unread), slower than `timeout_s` answers 408, both before
    the app or any authentication runs. The app then reads the body from memory."""

    __slots__ = ("app", "max_bytes", "timeout_s")

    def __init__(self, app: Handler, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        hdrs = RequestHeaders(scope)
        try:
            body = await read_body(receive, hdrs.content_length, self.max_bytes, self.timeout_s)
        except GatewayError as err:
            await send_bytes(send, err.status, err.openai_body(), error_headers(err, hdrs.request_id or ""))
            return
        await self.app(scope, _replay(body, receive), send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read already, then the connection's own messages (disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict[str, Any]:
        if pending:
            return pending.pop()
        return await receive()

    return replay


# -- the server's own bounds ---------------------------------------------------------------------


class _HeadDeadlines(Deadlines):
    """Closes connections whose request line and headers take too long (slow-header slowloris)."""

    __slots__ = ()

    def late(self, item: Any) -> None:
        item.head_too_slow()


def _error_response(status: int, reason: bytes, err: GatewayError) -> bytes:
    body = err.openai_body()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason, len(body))
    ) + body


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def _headers_too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"The request line and headers exceed {limit} bytes.")


@dataclass(slots=True)
class HeaderBounds:
    """The request-head bounds every connection of this process gets (`set_header_bounds`)."""

    max_bytes: int = 64 * 1024
    timeout_s: float = 10.0


HEADER_BOUNDS = HeaderBounds()
# What `uvicorn.Config(http=...)` takes; a string, so worker processes import the class themselves.
HTTP_PROTOCOL = "llmgate.surfaces.http:BoundedHttpToolsProtocol"


def set_header_bounds(max_bytes: int, timeout_s: float) -> None:
    """Set this process's request-head bounds (`gateway.max_header_bytes`, `gateway.header_timeout_s`)."""
    HEADER_BOUNDS.max_bytes = max_bytes
    HEADER_BOUNDS.timeout_s = timeout_s


def __getattr__(name: str) -> Any:
    if name == "BoundedHttpToolsProtocol":
        return bounded_http_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def bounded_http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the bounds it lacks: a request line plus headers
    over `HEADER_BOUNDS.max_bytes` gets 431, and one not complete `HEADER_BOUNDS.timeout_s`
    after its first byte (or after the connection opened) gets 408; both close the connection.

    httptools buffers a header until it is complete, so the size is counted on the raw
    bytes while the head is being read (one read's worth of overshoot at most), and
    measured exactly when a read also carried body bytes. Built on first use, so a
    process served by another server never imports uvicorn's protocol.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    heads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _HeadDeadlines]] = (
        weakref.WeakKeyDictionary()
    )

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _in_head = False
        _refused = False
        _heads: _HeadDeadlines | None = None  # this connection's loop's watch, found once

        def _start_head(self) -> None:
            if not self._in_head:
                self._in_head = True
                self._head_bytes = 0
                self._heads.enter(self)  # type: ignore[union-attr]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            per_loop = heads.setdefault(self.loop, {})
            timeout_s = HEADER_BOUNDS.timeout_s
            watch = per_loop.get(timeout_s)
            if watch is None:
                watch = per_loop[timeout_s] = _HeadDeadlines(timeout_s)
            self._heads = watch
            self._start_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._start_head()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._heads.leave(self)  # type: ignore[union-attr]
            # The raw count includes whatever body bytes came in the same read; measure exactly only then.
            limit = HEADER_BOUNDS.max_bytes
            if self._head_bytes > limit and _head_size(self.url, self.headers) > limit:
                self._refuse(431, b"Request Header Fields Too Large", _headers_too_large(limit))
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > HEADER_BOUNDS.max_bytes:
                self._refuse(431, b"Request Header Fields Too Large", _headers_too_large(HEADER_BOUNDS.max_bytes))

        def connection_lost(self, exc: Exception | None) -> None:
            self._heads.leave(self)  # type: ignore[union-attr]
            super().connection_lost(exc)

        def head_too_slow(self) -> None:
            if self._in_head and not self.transport.is_closing():
                error = GatewayError(
                    f"The request headers did not arrive within {HEADER_BOUNDS.timeout_s:g} seconds.",
                    status=408,
                    code="request_timeout",
                )
                error.type = "invalid_request_error"
                self._refuse(408, b"Request Timeout", error)

        def _refuse(self, status: int, reason: bytes, err: GatewayError) -> None:
            self._refused = True
            self._in_head = False
            self._heads.leave(self)  # type: ignore[union-attr]
            self.transport.write(_error_response(status, reason, err))
            self.transport.close()

    global _write_whole
    _write_whole = _whole_response_writer()
    return BoundedHttpToolsProtocol


def _whole_response_writer() -> WholeResponseWriter:
    """Answer a complete response with one `transport.write` instead of uvicorn's two.

    uvicorn writes the status line and headers when `http.response.start` arrives and
    the body on `http.response.body`: two syscalls per answer, each running the
    receiving side's TCP work on loopback, and the client woken twice. For a whole
    body known up front this writes both at once and completes the cycle exactly as
    uvicorn's `send` would (same header checks, keep-alive, `on_response`). Anything
    unusual (another server, HEAD, a paused or closed transport, an answer already
    started, a header uvicorn would treat specially) returns False: the caller then
    sends the two ASGI messages, unchanged.
    """
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        STATUS_LINE,
        RequestResponseCycle,
    )

    special = {b"connection", b"transfer-encoding"}

    def write_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        cycle = getattr(send, "__self__", None)
        if (
            type(cycle) is not RequestResponseCycle
            or cycle.response_started
            or cycle.access_log
            or cycle.disconnected
            or cycle.flow.write_paused
            or cycle.scope["method"] == "HEAD"
        ):
            return False
        content = [STATUS_LINE[status]]
        for name, value in (*cycle.default_headers, *headers):
            name = name.lower()
            if name in special or HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                return False
            content += (name, b": ", value, b"\r\n")
        keep_alive = cycle.keep_alive
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        cycle.transport.write(b"".join(content))
        cycle.expected_content_length = 0
        cycle.response_complete = True
        cycle.message_event.set()
        if not keep_alive:
            cycle.transport.close()
        cycle.on_response()
        return True

    return write_whole
