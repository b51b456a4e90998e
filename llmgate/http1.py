"""A small HTTP/1.1 keep-alive client for the upstream calls (asyncio protocol + httptools).

Why not aiohttp: measured in front of the bench kit's nginx, aiohttp's client
spent ~150 us of CPU per call (request and response objects, header multidicts,
cookie handling, tracing hooks), this client ~40-60 us, out of ~450 us for a
whole proxied call. The gateway needs little of a general client: one request
per connection at a time, bodies that are bytes, responses read whole or
streamed as raw chunks, keep-alive pooling, TLS, and timeouts.

Semantics:
- Connections are pooled per (scheme, host, port) and reused while the server
  keeps them alive; an idle one is dropped after `keepalive_s`. A call holds
  one connection at a time, so connections are bounded by the calls in flight
  (plus at most `max_idle_per_host` idle ones per upstream).
- A request is never sent twice: a reused connection that the server closes
  before answering fails the attempt like any other connection loss (the
  router's retries decide what happens next; a server that closes idle
  connections is noticed while they idle, and they are not reused).
- A call cancelled or failed mid-response closes its connection (its state is
  unknown), so a pooled connection is always at a message boundary.
- No `Accept-Encoding` is sent, so bodies arrive as the upstream produced them.
- Failures are OSError subclasses (`UpstreamConnectionError`, and
  `UpstreamUnreachable` when no connection could be made); timeouts are
  TimeoutError from `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools

# Reading is paused while a stream's consumer lags this far behind.
_STREAM_HIGH_WATER = 256 * 1024
_URL_CACHE_MAX = 1024


class UpstreamConnectionError(ConnectionError):
    """The connection failed, closed early, or carried a malformed response."""


class UpstreamUnreachable(UpstreamConnectionError):
    """No connection could be made (refused, no route, name not found)."""


class _Target:
    """A parsed URL: where to connect and what to put in the request line."""

    __slots__ = ("host", "host_header", "pool_key", "port", "target", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = parts.port is None or parts.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode("ascii")
        self.target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("ascii")
        self.pool_key = (self.tls, self.host, self.port)


class Response:
    """One response: status and headers at once, the body read whole or as chunks."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers

    @property
    def complete(self) -> bool:
        return self._conn.complete

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        conn = self._conn
        parts = []
        while (chunk := await conn.next_chunk()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive."""
        conn = self._conn
        while (chunk := await conn.next_chunk()) is not None:
            yield chunk

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool if the body was read
        to its end and the server keeps it open; otherwise it is closed."""
        self._conn.release()

    def close(self) -> None:
        self._conn.close()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response currently being read on it."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.header_list: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamConnectionError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectionError(f"malformed HTTP response from the upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self.headers_done and self._until_close():
            self.on_message_complete()
            return
        self._fail(UpstreamConnectionError("the upstream closed the connection"))

    # -- httptools callbacks ------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _STREAM_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback
        self.complete = True
        self._wake()

    # -- used by the client -------------------------------------------------------------
    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self.header_list}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def send(self, head: bytes, body: bytes) -> Response:
        """Write one request and wait for the response head."""
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()
        headers: dict[str, str] = {}
        for name, value in self.header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return Response(self, self.parser.get_status_code(), headers)

    async def next_chunk(self) -> bytes | None:
        """The next body chunk; None at the end of the message."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < _STREAM_HIGH_WATER // 2 and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def release(self) -> None:
        """Back to the pool when the response was read to its end and the server keeps it open."""
        if self.complete and not self.closed and self.keep_alive:
            self.pool.put(self)
        else:
            self.close()


class _Pool:
    """Idle connections to one (scheme, host, port), most recently used first."""

    def __init__(self, client: Http1Client, target: _Target) -> None:
        self.client = client
        self.host = target.host
        self.port = target.port
        self.tls = target.tls
        self.idle: list[_Connection] = []

    def take(self) -> _Connection | None:
        now = time.monotonic()
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.client.keepalive_s:
                conn.close()
                continue
            return conn
        return None

    def put(self, conn: _Connection) -> None:
        if len(self.idle) >= self.client.max_idle_per_host:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    async def connect(self, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_context: ssl.SSLContext | None = self.client.ssl_context() if self.tls else None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=ssl_context,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            raise
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class Http1Client:
    """Pooled HTTP/1.1 client; one per process, owned by the app lifespan."""

    def __init__(self, keepalive_s: float = 60.0, max_idle_per_host: int = 1000) -> None:
        self.keepalive_s = keepalive_s
        self.max_idle_per_host = max_idle_per_host
        self._pools: dict[tuple[bool, str, int], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._ssl: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) >= _URL_CACHE_MAX:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes, connect_timeout: float | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One whole exchange: (status, lower-case headers, body)."""
        response = await self.open(method, url, headers, body, connect_timeout)
        try:
            data = await response.read()
        except BaseException:
            response.close()
            raise
        response.release()
        return response.status, response.headers, data

    async def open(
        self, method: str, url: str, headers: dict[str, str], body: bytes, connect_timeout: float | None = None
    ) -> Response:
        """Send a request and return once the response head is in; the caller reads the body,
        then calls `finish(response)` (also when it stops early: the connection is closed then)."""
        target = self._target(url)
        pool = self._pools.get(target.pool_key)
        if pool is None:
            pool = self._pools[target.pool_key] = _Pool(self, target)
        head = build_head(method, target, headers, body)
        conn = pool.take() or await pool.connect(connect_timeout)
        try:
            return await conn.send(head, body)
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def finish(response: Response) -> None:
        """Return the connection to the pool if the body was read to its end; else close it."""
        response.release()

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def build_head(method: str, target: _Target, headers: dict[str, Any], body: bytes) -> bytes:
    """The request line and headers; Host and Content-Length are the client's."""
    lines = [method.encode("ascii"), b" ", target.target, b" HTTP/1.1\r\nhost: ", target.host_header, b"\r\n"]
    for name, value in headers.items():
        lower = name.lower()
        if lower in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        text = str(value)
        if "\n" in text or "\r" in text:
            raise ValueError(f"header {name!r}: line breaks are not allowed in a header value")
        lines.append(f"{name}: {text}\r\n".encode("latin-1"))
    if body or method not in ("GET", "HEAD"):
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines)
