"""Raw ASGI primitives for the hot-path surfaces: read the body, answer bytes, stream.

The proxied surfaces are plain ASGI handlers (no framework routing or model
validation on the hot path); this module is the little they share.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from llmgate.errors import GatewayError, InvalidRequest, PayloadTooLarge

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


def new_request_id() -> str:
    return os.urandom(12).hex()


async def read_body(receive: Receive, declared: int | None, limit: int) -> bytes:
    """The whole request body, refusing (413) past `limit` without reading it all."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit} bytes.")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        parts.append(chunk)
    return b"".join(parts)


def parse_json_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object, with errors that say what is wrong."""
    if not raw:
        raise InvalidRequest("The request body is empty; a JSON object is required.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth(data) > max_depth:
        raise InvalidRequest(f"The request body is nested deeper than {max_depth} levels.")
    return data


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a deep document must not exhaust the stack)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in node)
    return deepest


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes = JSON,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
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
