"""Test harness: a real gateway on an ephemeral port, and fault-injecting fake upstreams.

`GatewayServer` runs the real ASGI app under uvicorn (uvloop, httptools) in a
background thread, so the real `openai` and `anthropic` SDKs talk to it over
loopback. `FakeUpstream` is a tiny HTTP/1.1 server on raw asyncio sockets: each
request is answered by a script of steps (send status and headers, send body
bytes, sleep, hang, reset the connection), which is what fault tests need and
what a framework server cannot do.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

from llmgate.app import create_app
from llmgate.config import Settings, parse_settings
from llmgate.surfaces.http import HTTP_PROTOCOL


def make_settings(doc: dict[str, Any]) -> Settings:
    """Settings for a test gateway; its SQLite database and spill file go to a fresh temp dir."""
    gateway = dict(doc.get("gateway") or {})
    if "database_url" not in gateway or "usage_spill_path" not in gateway:
        tmp = tempfile.mkdtemp(prefix="llmgate-test-")
        gateway.setdefault("database_url", f"sqlite:///{tmp}/gateway.db")
        gateway.setdefault("usage_spill_path", f"{tmp}/spill.jsonl")
    gateway.setdefault("log_requests", False)
    return parse_settings({**doc, "gateway": gateway}, "test-config")


class _Thread:
    """An asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class GatewayServer:
    """The gateway app served by uvicorn on 127.0.0.1:<ephemeral port>."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that name it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(
            self.app, loop="asyncio", http=HTTP_PROTOCOL, lifespan="on", access_log=False, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gw(self) -> Any:
        return self.app.gw

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()


# -- fake upstream ----------------------------------------------------------------


@dataclass
class Step:
    """One thing the fake upstream does: `head` (status + headers), `body` bytes, `sleep`, `hang`, `reset`."""

    kind: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    seconds: float = 0.0


def head(status: int = 200, headers: dict[str, str] | None = None, chunked: bool = False) -> Step:
    h = dict(headers or {})
    if chunked:
        h["transfer-encoding"] = "chunked"
    return Step("head", status=status, headers=h)


def body(data: bytes) -> Step:
    return Step("body", data=data)


def sleep(seconds: float) -> Step:
    return Step("sleep", seconds=seconds)


def hang() -> Step:
    return Step("hang")


def reset() -> Step:
    return Step("reset")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> list[Step]:
    data = orjson.dumps(payload)
    return [
        head(status, {"content-type": "application/json", "content-length": str(len(data)), **(headers or {})}),
        body(data),
    ]


def sse_response(events: list[bytes], delay: float = 0.0, end: bool = True) -> list[Step]:
    """An SSE answer, one chunk per event (chunked encoding); `end=False` cuts it without the last chunk."""
    steps: list[Step] = [head(200, {"content-type": "text/event-stream"}, chunked=True)]
    for event in events:
        if delay:
            steps.append(sleep(delay))
        steps.append(body(event))
    if end:
        steps.append(Step("end"))
    return steps


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


Script = Callable[[Received], list[Step]]


class FakeUpstream:
    """A scripted HTTP/1.1 server. `script(request) -> steps` decides each answer."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Received] = []
        self.disconnects = 0  # connections the client closed while we were still answering
        self._runner = _Thread()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeUpstream:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._runner.run(start())
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        self._runner.run(stop())
        self._runner.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                size = int(headers.get("content-length", "0"))
                data = await reader.readexactly(size) if size else b""
                req = Received(method, path, headers, data)
                self.requests.append(req)
                if not await self._answer(self.script(req), reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _answer(self, steps: list[Step], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        chunked = False
        try:
            for step in steps:
                if step.kind == "head":
                    chunked = step.headers.get("transfer-encoding") == "chunked"
                    lines = [f"HTTP/1.1 {step.status} X"] + [f"{k}: {v}" for k, v in step.headers.items()]
                    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                elif step.kind == "body":
                    if chunked:
                        writer.write(f"{len(step.data):x}\r\n".encode() + step.data + b"\r\n")
                    else:
                        writer.write(step.data)
                elif step.kind == "end":
                    if chunked:
                        writer.write(b"0\r\n\r\n")
                elif step.kind in ("sleep", "hang"):
                    await writer.drain()
                    if not await self._wait_unless_closed(reader, 3600 if step.kind == "hang" else step.seconds):
                        return False
                elif step.kind == "reset":
                    writer.transport.abort()
                    return False
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            return False
        return True

    async def _wait_unless_closed(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait `seconds`, noticing a client that closes the connection meanwhile (False)."""
        try:
            got = await asyncio.wait_for(reader.read(1), timeout=seconds)
        except TimeoutError:
            return True
        if got == b"":
            self.disconnects += 1
            return False
        return True
