"""`send_bytes` through uvicorn: a whole response leaves in one write; the cycle ends as uvicorn's send ends it."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from llmgate.surfaces import http as surface_http
from llmgate.surfaces.http import HTTP_PROTOCOL, bounded_http_protocol, send_bytes


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(method: str = "POST", keep_alive: bool = True, access_log: bool = False) -> tuple[Any, RecordingTransport]:
    transport = RecordingTransport()
    finished: list[bool] = []
    cycle = RequestResponseCycle(
        scope={  # type: ignore[typeddict-item]
            "type": "http",
            "method": method,
            "path": "/",
            "query_string": b"",
            "headers": [],
            "http_version": "1.1",
            "client": ("127.0.0.1", 5000),
        },
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=access_log,
        default_headers=[(b"server", b"uvicorn"), (b"date", b"Wed, 25 Nov 2026 21:00:00 GMT")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: finished.append(True),
    )
    cycle.finished = finished  # type: ignore[attr-defined]
    return cycle, transport


@pytest.fixture(autouse=True)
def _writer_installed() -> None:
    bounded_http_protocol()
    assert surface_http._write_whole is not None


async def test_whole_response_is_one_write_and_completes_the_cycle() -> None:
    cycle, transport = _cycle()
    await send_bytes(cycle.send, 201, b'{"ok":true}', [(b"x-request-id", b"req-1")])
    assert len(transport.writes) == 1
    wire = transport.writes[0]
    head, _, body = wire.partition(b"\r\n\r\n")
    assert body == b'{"ok":true}'
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 201 Created"
    assert set(lines[1:]) == {
        b"server: uvicorn",
        b"date: Wed, 25 Nov 2026 21:00:00 GMT",
        b"content-type: application/json",
        b"content-length: 11",
        b"x-request-id: req-1",
    }
    assert cycle.response_started and cycle.response_complete
    assert cycle.message_event.is_set()
    assert cycle.finished == [True]
    assert not transport.closed


async def test_the_one_write_matches_what_uvicorns_two_messages_write() -> None:
    fast, fast_transport = _cycle()
    await send_bytes(fast.send, 200, b"[1,2,3]", [(b"x-a", b"1")])
    slow, slow_transport = _cycle()
    await slow.send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"7"), (b"x-a", b"1")],
        }
    )
    await slow.send({"type": "http.response.body", "body": b"[1,2,3]"})
    assert len(slow_transport.writes) == 2
    assert fast_transport.writes == [b"".join(slow_transport.writes)]


async def test_a_connection_not_kept_alive_is_told_and_closed() -> None:
    cycle, transport = _cycle(keep_alive=False)
    await send_bytes(cycle.send, 200, b"{}", [])
    assert len(transport.writes) == 1
    assert b"\r\nconnection: close\r\n" in transport.writes[0]
    assert transport.closed and cycle.finished == [True]


@pytest.mark.parametrize(
    "setup",
    ["head", "access_log", "write_paused", "disconnected", "special_header", "bad_value"],
)
async def test_unusual_cases_take_uvicorns_own_path(setup: str) -> None:
    cycle, transport = _cycle(method="HEAD" if setup == "head" else "POST", access_log=setup == "access_log")
    headers: list[tuple[bytes, bytes]] = []
    if setup == "write_paused":
        cycle.flow.write_paused = True
        cycle.flow._is_writable_event.clear()
        asyncio.get_running_loop().call_later(0.01, cycle.flow._is_writable_event.set)
    if setup == "disconnected":
        cycle.disconnected = True
    if setup == "special_header":
        headers = [(b"connection", b"close")]
    if setup == "bad_value":
        headers = [(b"x-bad", b"a\x01b")]
    if setup == "bad_value":
        with pytest.raises(RuntimeError, match="Invalid HTTP header value"):
            await send_bytes(cycle.send, 200, b"{}", headers)
        return
    await send_bytes(cycle.send, 200, b"{}", headers)
    if setup == "disconnected":
        assert transport.writes == []
    elif setup == "head":
        assert transport.writes[1:] in ([], [b""])
    else:
        assert len(transport.writes) == 2


async def test_a_send_that_is_not_uvicorns_gets_the_two_asgi_messages() -> None:
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await send_bytes(send, 404, b"{}", [(b"x-request-id", b"r")])
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert messages[0]["status"] == 404 and messages[1]["body"] == b"{}"


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send_bytes(send, 200, b'{"path":"%s"}' % scope["path"].encode(), [])


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_answer, http=HTTP_PROTOCOL, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(5)
    sock.close()


def _read_response(reader: Any) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += reader.readline()
    length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"content-length")).split(b": ")[1])
    return head + reader.read(length)


def test_keep_alive_and_pipelined_requests_on_a_real_server(server_port: int) -> None:
    with socket.create_connection(("127.0.0.1", server_port), timeout=5) as conn, conn.makefile("rb") as reader:
        conn.sendall(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_response(reader).endswith(b'{"path":"/one"}')
        conn.sendall(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\nGET /three HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_response(reader).endswith(b'{"path":"/two"}')
        assert _read_response(reader).endswith(b'{"path":"/three"}')
        conn.sendall(b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = _read_response(reader)
        assert b"connection: close" in answer and answer.endswith(b'{"path":"/last"}')
        assert reader.read(10) == b""
