"""The upstream HTTP/1.1 client against a scripted loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llmgate.http1 import Http1Client, UpstreamConnectionError, UpstreamUnreachable

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


class ScriptedServer:
    """Accepts connections and answers each request with the script; records what it saw."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                if await self.script(reader, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def respond(raw: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()

    return script


OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nx-a: 1\r\nx-a: 2\r\n\r\n{"ok":true}'


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    c = Http1Client()
    yield c
    await c.aclose()


async def test_keeps_the_connection_alive_and_sends_host_and_length(client: Http1Client) -> None:
    async with ScriptedServer(respond(OK)) as server:
        port = server.url.split(":")[2].split("/")[0]
        for _ in range(3):
            status, headers, body = await client.request("POST", server.url, {"authorization": "Bearer k"}, b"{}")
            assert (status, body) == (200, b'{"ok":true}')
            assert headers["content-type"] == "application/json"
            assert headers["x-a"] == "1, 2"
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n".encode() in first
    assert b"content-length: 2\r\n" in first and b"authorization: Bearer k\r\n" in first
    assert first.endswith(b"\r\n\r\n{}")


async def test_reads_a_chunked_body(client: Http1Client) -> None:
    raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with ScriptedServer(respond(raw)) as server:
        status, _, body = await client.request("POST", server.url, {}, b"")
        again = await client.request("POST", server.url, {}, b"")
    assert (status, body) == (200, b"hello world")
    assert again[2] == b"hello world"
    assert server.connections == 1


async def test_reads_a_body_delimited_by_close_and_does_not_reuse_it(client: Http1Client) -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await writer.drain()
        return False

    async with ScriptedServer(close_delimited) as server:
        assert (await client.request("POST", server.url, {}, b"x"))[2] == b"all of it"
        assert (await client.request("POST", server.url, {}, b"x"))[2] == b"all of it"
    assert server.connections == 2


async def test_connection_close_header_is_honoured(client: Http1Client) -> None:
    raw = b"HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy"
    async with ScriptedServer(respond(raw)) as server:
        for _ in range(2):
            status, _, body = await client.request("POST", server.url, {}, b"")
            assert (status, body) == (503, b"busy")
    assert server.connections == 2


async def test_unreachable_upstream() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    c = Http1Client()
    with pytest.raises(UpstreamUnreachable):
        await c.request("POST", f"http://127.0.0.1:{port}/v1", {}, b"")
    await c.aclose()


async def test_connection_lost_mid_body_is_an_error(client: Http1Client) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        return False

    async with ScriptedServer(cut) as server:
        with pytest.raises(UpstreamConnectionError):
            await client.request("POST", server.url, {}, b"")


async def test_malformed_response_is_an_error(client: Http1Client) -> None:
    async with ScriptedServer(respond(b"this is not http\r\n\r\n")) as server:
        with pytest.raises(UpstreamConnectionError):
            await client.request("POST", server.url, {}, b"")


async def test_an_idle_connection_the_server_closed_is_not_reused(client: Http1Client) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK.replace(b"x-a: 1\r\n", b""))
        await writer.drain()
        return False  # close after answering, without `connection: close`

    async with ScriptedServer(once) as server:
        await client.request("POST", server.url, {}, b"")
        await asyncio.sleep(0.05)  # the close reaches the idle connection
        status, _, _ = await client.request("POST", server.url, {}, b"")
    assert status == 200
    assert server.connections == 2


async def test_stream_chunks_arrive_as_sent_and_an_early_stop_closes(client: Http1Client) -> None:
    release = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()

    async with ScriptedServer(stream) as server:
        response = await client.open("POST", server.url, {}, b"")
        chunks = response.iter_chunks()
        assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
        assert await anext(chunks) == b"data: 1"
        release.set()
        assert await anext(chunks) == b"data: 2"
        assert await anext(chunks, None) is None
        Http1Client.finish(response)

        release.clear()
        early = await client.open("POST", server.url, {}, b"")
        assert await anext(early.iter_chunks()) == b"data: 1"
        Http1Client.finish(early)  # not read to the end: closed, never pooled
        release.set()
        status, _, body = await client.request("POST", server.url, {}, b"")
    assert (status, body) == (200, b"data: 1data: 2")
    assert server.connections == 2


async def test_a_cancelled_call_closes_its_connection(client: Http1Client) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        writer.write(OK)
        await writer.drain()

    async with ScriptedServer(slow) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.request("POST", server.url, {}, b"")
        status, _, _ = await client.request("POST", server.url, {}, b"")
    assert status == 200
    assert server.connections == 2


async def test_header_values_with_line_breaks_are_refused(client: Http1Client) -> None:
    with pytest.raises(ValueError, match="line breaks"):
        await client.request("POST", "http://127.0.0.1:9/v1", {"x-evil": "a\r\nhost: other"}, b"")
