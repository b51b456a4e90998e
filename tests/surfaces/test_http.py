"""The raw ASGI primitives: body limits and deadlines, the nesting check, public errors, header bounds."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgate.errors import InvalidRequest, PayloadTooLarge, UpstreamCallerError, UpstreamError
from llmgate.logs import register_secret
from llmgate.surfaces.http import (
    HTTP_PROTOCOL,
    BodyLimits,
    BodyTimeout,
    HeaderBounds,
    nested_deeper_than,
    parse_json_object,
    public_error,
    read_body,
    set_header_bounds,
)


def _receiver(chunks: list[bytes], delay: float = 0.0, hang: bool = False) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        if hang and not messages:
            await asyncio.sleep(3600)
        if delay:
            await asyncio.sleep(delay)
        return messages.pop(0)

    return receive


async def test_read_body_joins_chunks_within_the_limit() -> None:
    assert await read_body(_receiver([b"ab", b"cd", b""]), None, 10) == b"abcd"
    assert await read_body(_receiver([b"whole"]), 5, 5) == b"whole"


async def test_read_body_refuses_past_the_limit() -> None:
    with pytest.raises(PayloadTooLarge):
        await read_body(_receiver([b"x"]), 11, 10)
    with pytest.raises(PayloadTooLarge):
        await read_body(_receiver([b"123456", b"123456", b""]), None, 10)
    with pytest.raises(PayloadTooLarge):  # undeclared (chunked) and arriving in one message
        await read_body(_receiver([b"x" * 11]), None, 10)


async def test_read_body_times_out_a_slow_body() -> None:
    started = time.monotonic()
    with pytest.raises(BodyTimeout) as caught:
        await read_body(_receiver([b"a"] * 100, delay=0.05), None, 1000, timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 1.0
    assert caught.value.status == 408 and caught.value.headers["connection"] == "close"
    with pytest.raises(BodyTimeout):
        await read_body(_receiver([], hang=True), 10, 1000, timeout_s=0.2)
    assert asyncio.current_task().cancelling() == 0  # the deadline's cancel was taken back


async def test_read_body_deadline_leaves_fast_reads_and_other_cancels_alone() -> None:
    for _ in range(100):
        assert await read_body(_receiver([b"{}"]), 2, 10, timeout_s=0.2) == b"{}"
    await asyncio.sleep(0.3)  # the sweep runs and finds no late reader
    assert await read_body(_receiver([b"{}"]), 2, 10, timeout_s=0.2) == b"{}"
    task = asyncio.ensure_future(read_body(_receiver([], hang=True), 10, 1000, timeout_s=5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _walk_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_walk_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_walk_depth(v) for v in value), default=0)
    return 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(alphabet='[]{}"\\ab\n\u00e9'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\k'), inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_json, limit=st.integers(min_value=1, max_value=8))
def test_nesting_check_matches_a_walk_of_the_document(value: Any, limit: int) -> None:
    raw = orjson.dumps(value)
    assert nested_deeper_than(raw, limit) == (_walk_depth(value) > limit)


def test_parse_json_object_refuses_deep_documents_quickly() -> None:
    ok = {"a": [[[[1]]]]}
    assert parse_json_object(orjson.dumps(ok), 5) == ok
    with pytest.raises(InvalidRequest, match="nested deeper than 4"):
        parse_json_object(orjson.dumps(ok), 4)
    started = time.monotonic()
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        with pytest.raises(InvalidRequest, match="nested deeper than 64"):
            parse_json_object(raw, 64)
    assert time.monotonic() - started < 0.5
    brackets_in_strings = {"text": "[[[[[[[[[[{{{{{{{{{{" * 10}
    assert parse_json_object(orjson.dumps(brackets_in_strings), 3) == brackets_in_strings


def test_public_error_masks_echoed_credentials() -> None:
    register_secret("sk-provider-unit-SECRET")
    err = public_error(UpstreamError("provider 'p' rejected the gateway's credentials (401): sk-provider-unit-SECRET"))
    assert "sk-provider-unit-SECRET" not in err.message and err.message.startswith("provider 'p' rejected")
    assert "SECRET" not in public_error(UpstreamError("echo: Authorization: Bearer abcdefghijkSECRET")).message
    assert public_error(InvalidRequest("`n` may be at most 16.")).message == "`n` may be at most 16."
    echoed = UpstreamCallerError("bad request from Bearer sk-provider-unit-SECRET", status=400)
    assert "SECRET" not in public_error(echoed).message


# -- the bounded uvicorn protocol ------------------------------------------------------------------


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive, None, 10_000_000)
    payload = orjson.dumps({"bytes": len(body)})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def bounded_server() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    set_header_bounds(max_bytes=8 * 1024, timeout_s=0.5)
    config = uvicorn.Config(_echo_app, http=HTTP_PROTOCOL, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(5)
    sock.close()
    set_header_bounds(HeaderBounds().max_bytes, HeaderBounds().timeout_s)


def _exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            for part in parts:
                conn.sendall(part)
                time.sleep(pause)
        except OSError:
            pass
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and (b"connection: close" in out.lower() or out.endswith(b"}")):
                break
        return out


def test_small_headers_and_a_large_body_pass(bounded_server: int) -> None:
    body = b"x" * 2_000_000
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = _exchange(bounded_server, head + body)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"bytes":2000000}')


def test_oversized_headers_get_431_and_the_connection_closes(bounded_server: int) -> None:
    started = time.monotonic()
    answer = _exchange(bounded_server, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ", *([b"a" * 4096] * 2000))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "invalid_request_error"
    assert time.monotonic() - started < 3


def test_many_headers_arriving_in_one_read_get_431(bounded_server: int) -> None:
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(150))  # ~16 KB, one write
    answer = _exchange(bounded_server, b"GET / HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_slow_headers_get_408(bounded_server: int) -> None:
    started = time.monotonic()
    answer = _exchange(bounded_server, b"GET / HTTP/1.1\r\n", *([b"X-A: b\r\n"] * 20), pause=0.1)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert time.monotonic() - started < 2.5
    idle = _exchange(bounded_server)
    assert idle.startswith(b"HTTP/1.1 408")


def test_keep_alive_requests_each_get_their_own_header_deadline(bounded_server: int) -> None:
    with socket.create_connection(("127.0.0.1", bounded_server), timeout=5) as conn:
        for _ in range(3):
            time.sleep(0.3)  # under the 0.5 s deadline each time, over it in total
            conn.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")


# -- BodyLimits around the FastAPI part ----------------------------------------------------------------


def _limited_api() -> Any:
    api = FastAPI()

    @api.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    return BodyLimits(api, max_bytes=1000, timeout_s=0.3)


async def test_body_limits_pass_small_bodies_and_bodiless_requests() -> None:
    transport = httpx.ASGITransport(app=_limited_api())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/echo", content=b"x" * 1000)).json() == {"bytes": 1000}
        assert (await client.get("/ping")).json() == {"ok": "yes"}
        too_big = await client.post("/echo", content=b"x" * 1001)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"


async def _call(app: Any, headers: list[tuple[bytes, bytes]], receive: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": headers, "query_string": b""}
    await app(scope, receive, send)
    return sent


async def test_body_limits_time_out_a_slow_body_before_the_app_runs() -> None:
    started = time.monotonic()
    sent = await _call(_limited_api(), [(b"content-length", b"10")], _receiver([], hang=True))
    assert sent[0]["status"] == 408 and time.monotonic() - started < 1.0
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "request_timeout"
    chunked = await _call(_limited_api(), [(b"transfer-encoding", b"chunked")], _receiver([b"x" * 600, b"x" * 600]))
    assert chunked[0]["status"] == 413
