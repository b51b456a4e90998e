"""A lean asyncio Redis client for the limiter's hot path: RESP2 on one pipelined connection.

redis-py spends most of an admission's gateway CPU around the command rather than in it
(argument encoding, the connection pool, the retry wrapper, one write per command). Here a
command is encoded straight to bytes (a `ScriptCall` encodes a script's fixed keys and
arguments once; each call fills only its slots), every command issued during one event-loop
iteration leaves in a single `transport.write` (auto-pipelining), and replies are parsed by
hiredis and matched to their futures in order.

Failure semantics, the ones the limiter's failover relies on:
- nothing is retried behind the caller's back: when Redis cannot be reached a command fails
  at once with `ConnectionFailed`;
- a command is written only to a connection believed alive. Before writing to a connection
  with no reply outstanding, its socket is peeked for an end of file, so a connection the
  server closed while it was quiet (a restart, an idle `timeout`) is replaced before anything
  is written to it: the first commands after a Redis restart do not fail;
- a command that was written and whose reply is lost (the connection dropped, or no answer
  within `timeout_s`, which also drops the connection) fails with `ConnectionFailed` and is
  never resent: it may have run;
- an error reply raises `ResponseError`; `NoScriptError` and `NotServingError` (READONLY,
  LOADING, NOAUTH...: a server that is up but will not serve) are its subclasses.

Left out: RESP3, pub/sub, MULTI, Cluster, Sentinel, unix sockets; a blocking command (BLPOP...)
is bound by `timeout_s` like any other.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis

Arg = str | int | bytes | float

_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)  # the descriptor is non-blocking anyway


class RespError(Exception):
    """Anything this client raises."""


class ConnectionFailed(RespError):
    """Redis could not be reached, or a written command's reply was lost (it may have run)."""


class ResponseError(RespError):
    """Redis answered the command with an error."""


class NoScriptError(ResponseError):
    """EVALSHA of a script the server does not hold (e.g. after a restart)."""


class NotServingError(ResponseError):
    """The server is up but will not serve: a replica (READONLY), loading its data (LOADING),
    cut off from its master (MASTERDOWN), refusing our credentials (NOAUTH, WRONGPASS), full."""


class ProtocolError(RespError):
    """The server sent something that is not RESP2."""


_NOT_SERVING = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "NOAUTH",
    "WRONGPASS",
    "ERR invalid password",
    "ERR max number of clients reached",
)


def _reply_error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(_NOT_SERVING):
        return NotServingError(message)
    return ResponseError(message)


# -- encoding ---------------------------------------------------------------------------------


def _to_bytes(a: Any) -> bytes:
    if isinstance(a, bytes | bytearray | memoryview):
        return bytes(a)
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, bool):
        raise TypeError("a bool is not a Redis argument: send 0/1 or a string")
    if isinstance(a, int):
        return b"%d" % a
    if isinstance(a, float):
        return repr(a).encode()
    raise TypeError(f"a {type(a).__name__} is not a Redis argument (bytes, str, int or float)")


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP2 (an array of bulk strings)."""
    parts = [f"*{len(args)}\r\n"]
    for a in args:
        if type(a) is not str:
            if type(a) is not int:
                break
            a = str(a)
        parts.append(f"${len(a)}\r\n{a}\r\n")
    else:
        text = "".join(parts)
        data = text.encode()
        if len(data) == len(text):  # all ASCII: the $len counts were bytes
            return data
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _to_bytes(a)
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class _Slot:
    def __repr__(self) -> str:
        return "SLOT"


SLOT: Any = _Slot()
"""Marks an argument of a `ScriptCall` that each call fills in."""


class Script:
    """A Lua script, sent by its SHA1 (EVALSHA) and by its source only when the server lacks it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, keys: Sequence[Arg], args: Sequence[Arg]) -> ScriptCall:
        return ScriptCall(self, keys, args)


class ScriptCall:
    """An EVALSHA whose keys and arguments are fixed except the `SLOT`s, encoded once.

    The limiter's scripts take a dozen or more keys and arguments of which two or three change
    per request: rendering encodes only those (a few hundred ns instead of a few µs)."""

    __slots__ = ("_first", "_items", "_tail", "script")

    def __init__(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> None:
        self.script = script
        self._items: list[Arg] = [len(keys), *keys, *args]
        chunks: list[bytes] = []
        current = [b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (2 + len(self._items), script.sha.encode())]
        for a in self._items:
            if a is SLOT:
                chunks.append(b"".join(current))
                current = []
            else:
                b = _to_bytes(a)
                current.append(b"$%d\r\n%b\r\n" % (len(b), b))
        chunks.append(b"".join(current))
        self._first = chunks[0]
        self._tail = tuple(chunks[1:])

    def render(self, values: Sequence[Arg]) -> bytes:
        """The EVALSHA command with `values` in the slots, in order."""
        if len(values) != len(self._tail):
            raise ValueError(f"{len(self._tail)} slots, {len(values)} values")
        out = [self._first]
        for v, chunk in zip(values, self._tail, strict=True):
            if type(v) is int:
                v = str(v)
            elif type(v) is not str or not v.isascii():
                b = _to_bytes(v)
                out += (b"$%d\r\n%b\r\n" % (len(b), b), chunk)
                continue
            out += (f"${len(v)}\r\n{v}\r\n".encode(), chunk)
        return b"".join(out)

    def render_eval(self, values: Sequence[Arg]) -> bytes:
        """The same call as an EVAL carrying the script's source."""
        filled = iter(values)
        items = [next(filled) if a is SLOT else a for a in self._items]
        return encode_command(("EVAL", self.script.source, *items))


# -- the connection ---------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One socket: written commands wait in `pending` (FIFO) for their replies."""

    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.loop = client._loop
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=_reply_error, protocolError=ProtocolError)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.written = 0
        # (commands written once this flush was, its deadline): answered = written - len(pending).
        self.deadlines: deque[tuple[int, float]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.gone: asyncio.Future[None] = self.loop.create_future()
        self._fd = -1
        self._family = self._type = self._proto = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._fd, self._family, self._type, self._proto = sock.fileno(), sock.family, sock.type, sock.proto

    def write(self, data: bytes, futures: list[asyncio.Future[Any]]) -> None:
        self.pending.extend(futures)
        self.written += len(futures)
        timeout = self.client.timeout_s
        if timeout is not None:
            deadline = self.loop.time() + timeout
            self.deadlines.append((self.written, deadline))
            if self.timer is None:
                self.timer = self.loop.call_at(deadline, self._check_deadline)
        self.transport.write(data)  # type: ignore[union-attr]

    def peer_closed(self) -> bool:
        """Whether the server closed this connection (an end of file is waiting to be read).

        Peeks the socket without consuming anything; a transport's own socket object refuses
        recv(), so a temporary one wraps the same descriptor and is detached again."""
        if self._fd < 0:
            return False
        probe = socket.socket(self._family, self._type, self._proto, self._fd)
        try:
            return probe.recv(1, _PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            probe.detach()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        try:
            reply = reader.gets()
            while reply is not False:
                future = pending.popleft()
                if not future.done():  # done: its caller was cancelled; the reply is dropped
                    if isinstance(reply, ResponseError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
                reply = reader.gets()
        except ProtocolError as exc:
            self.abort(ConnectionFailed(f"Redis protocol error: {exc}"))
        except IndexError:
            self.abort(ConnectionFailed("Redis sent a reply to no command"))

    def _check_deadline(self) -> None:
        self.timer = None
        answered = self.written - len(self.pending)
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= answered:
            deadlines.popleft()
        if not deadlines:
            return
        deadline = deadlines[0][1]
        if deadline <= self.loop.time():
            self.abort(ConnectionFailed(f"Redis did not answer within {self.client.timeout_s} s"))
        else:
            self.timer = self.loop.call_at(deadline, self._check_deadline)

    def abort(self, exc: ConnectionFailed) -> None:
        """Drop the connection now; every command waiting on it fails with `exc`."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self._fail(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._fail(ConnectionFailed("the Redis client was closed"))

    def _fail(self, exc: ConnectionFailed) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending = self.pending, deque()
        for future in pending:
            if not future.done():
                future.set_exception(exc)
        self.client._lost(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fd = -1
        reason = f": {exc}" if exc else ""
        self._fail(ConnectionFailed(f"the connection to Redis was lost{reason}"))
        if not self.gone.done():
            self.gone.set_result(None)


# -- the client -------------------------------------------------------------------------------


class RespClient:
    """Commands from any number of coroutines, pipelined on one connection opened on first use."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float | None = 1.0,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.ssl_context = ssl_context
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s if connect_timeout_s is not None else timeout_s
        hello: list[tuple[Arg, ...]] = []
        if password is not None:
            hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            hello.append(("SELECT", db))
        self._hello = [encode_command(c) for c in hello]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._buffer: list[bytes] = []
        self._waiting: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self.writes = 0  # transport writes (one per event-loop iteration with commands), for measuring

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 1.0) -> RespClient:
        """redis://[[user]:password@]host[:port][/db] or rediss:// (TLS, verified by default).

        Query options: db, socket_timeout, socket_connect_timeout, ssl_cert_reqs=none|required."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(
                f"Redis URL scheme {parts.scheme!r} is not supported: use redis:// or rediss:// "
                "(unix sockets and Sentinel are not)"
            )
        options = dict(parse_qsl(parts.query))
        db = options.pop("db", None) or parts.path.lstrip("/") or "0"
        timeout = float(options.pop("socket_timeout", timeout_s))
        connect_timeout = float(options.pop("socket_connect_timeout", timeout))
        cert_reqs = options.pop("ssl_cert_reqs", "required").lower()
        if options:
            raise ValueError(f"unsupported Redis URL options: {', '.join(sorted(options))}")
        context = None
        if parts.scheme == "rediss":
            context = ssl.create_default_context()
            if cert_reqs == "none":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif cert_reqs != "required":
                raise ValueError(f"ssl_cert_reqs must be none or required, not {cert_reqs!r}")
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or 6379,
            db=int(db),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            ssl_context=context,
            timeout_s=timeout,
            connect_timeout_s=connect_timeout,
        )

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    # -- sending ------------------------------------------------------------------------------

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        """Queue one encoded command; the future gets its reply. Everything queued during this
        event-loop iteration is written together, once the iteration's callbacks have run."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._buffer.append(payload)
        self._waiting.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._buffer:
            return
        conn = self._conn
        if conn is None or conn.closed or conn.transport.is_closing():  # type: ignore[union-attr]
            self._conn = None
            self._start_connecting()
            return
        if not conn.pending and conn.peer_closed():
            # Closed by the server while quiet: nothing of ours was lost; write on a new one.
            self._conn = None
            conn.abort(ConnectionFailed("the connection was closed by Redis"))
            self._start_connecting()
            return
        buffer, waiting = self._buffer, self._waiting
        self._buffer, self._waiting = [], []
        self.writes += 1
        conn.write(b"".join(buffer), waiting)

    def _start_connecting(self) -> None:
        if self._connecting is None:
            self._connecting = self._loop.create_task(self._connect())  # type: ignore[union-attr]

    async def _connect(self) -> None:
        try:
            conn = await self._open()
        except ConnectionFailed as exc:
            self._connecting = None
            self._fail_buffered(exc)
            return
        self._connecting = None
        self._conn = conn
        self._flush()

    async def _open(self) -> _Connection:
        loop = self._loop
        assert loop is not None
        conn: _Connection | None = None
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
                if self._hello:
                    futures = [loop.create_future() for _ in self._hello]
                    conn.write(b"".join(self._hello), futures)
                    for reply in await asyncio.gather(*futures, return_exceptions=True):
                        if isinstance(reply, BaseException):
                            raise reply
        except BaseException as exc:
            if conn is not None:
                conn.abort(ConnectionFailed("the connection attempt was abandoned"))
            if isinstance(exc, ResponseError):
                raise ConnectionFailed(f"Redis at {where} refused AUTH/SELECT: {exc}") from exc
            if isinstance(exc, OSError | TimeoutError | ConnectionFailed):
                raise ConnectionFailed(f"cannot connect to Redis at {where}: {exc or type(exc).__name__}") from exc
            raise
        return conn

    def _fail_buffered(self, exc: ConnectionFailed) -> None:
        waiting, self._buffer, self._waiting = self._waiting, [], []
        for future in waiting:
            if not future.done():
                future.set_exception(exc)

    def _lost(self, conn: _Connection) -> None:
        if conn is self._conn:
            self._conn = None
            if self._buffer and not self._flush_scheduled and self._loop is not None:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)

    # -- commands -----------------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        return await self.send(encode_command(args))

    async def run(self, call: ScriptCall, values: Sequence[Arg] = ()) -> Any:
        """Run a script call; a server that lacks the script (NOSCRIPT) gets its source this once."""
        try:
            return await self.send(call.render(values))
        except NoScriptError:
            return await self.send(call.render_eval(values))

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        return await self.run(ScriptCall(script, keys, args))

    async def script_load(self, source: str) -> str:
        sha = await self.execute("SCRIPT", "LOAD", source)
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    async def ping(self) -> bool:
        return await self.execute("PING") == b"PONG"

    async def aclose(self) -> None:
        """Drop the connection (commands waiting on it fail); a later command opens a new one."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self._fail_buffered(ConnectionFailed("the Redis client was closed"))
        self._flush_scheduled = False
        self._loop = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                async with asyncio.timeout(1.0):
                    await conn.gone
            except TimeoutError:
                conn.abort(ConnectionFailed("the Redis client was closed"))

    close = aclose
