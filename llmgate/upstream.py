"""The one HTTP client every adapter sends through (the gateway's only upstream I/O).

Production traffic goes through `aiohttp` directly: measured in front of the
bench kit's fake upstream, the httpx API (even over the aiohttp transport)
spent ~0.8 ms of CPU per proxied call, most of it in httpx's request, URL and
header models, against ~0.1 ms for aiohttp alone (../shared/bench/STACKS.md
shows the same ratio). Tests can hand in an httpx transport instead, so adapter
tests keep `respx.mock(using="httpx")`; both paths share the error translation
and the SSE decoding below. Transport failures are translated here, once, into
gateway errors that name the provider and never its key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx

from llmgate.config import Timeouts
from llmgate.errors import GatewayError, UpstreamError, UpstreamTimeout
from providers.base import WireRequest, WireResponse
from providers.sse import SSEDecoder, SSEEvent

ErrorMapper = Callable[[WireResponse], GatewayError]

_TRANSPORT_ERRORS = (aiohttp.ClientError, httpx.HTTPError, TimeoutError, OSError)


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def transport_error(exc: BaseException, provider: str, url: str) -> GatewayError:
    """A connection-level failure as the gateway's error: 504 for timeouts, 502 otherwise."""
    if isinstance(exc, aiohttp.ClientConnectorError | httpx.ConnectError) and not isinstance(exc, TimeoutError):
        return UpstreamError(f"provider {provider!r} is unreachable ({_host(url)})")
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return UpstreamTimeout(f"provider {provider!r} timed out")
    return UpstreamError(f"provider {provider!r} connection failed ({type(exc).__name__})")


class UpstreamClient:
    """Pooled keep-alive client owned by the app lifespan.

    `transport`: an httpx transport for tests (respx); None is aiohttp.
    """

    def __init__(self, max_connections: int = 1000, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._httpx = httpx.AsyncClient(transport=transport, timeout=None) if transport is not None else None
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    def _aiohttp(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=60)
            session = self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return session

    def _timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect)
            self._timeouts[timeouts] = timeout
        return timeout

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._httpx is not None:
            await self._httpx.aclose()

    async def send(self, request: WireRequest, timeouts: Timeouts, provider: str) -> WireResponse:
        """One request/response within `timeouts.total`."""
        try:
            if self._httpx is not None:
                async with asyncio.timeout(timeouts.total):
                    resp = await self._httpx.request(
                        request.method, request.url, content=request.body, headers=request.headers
                    )
                return WireResponse(resp.status_code, resp.content, resp.headers)
            async with self._aiohttp().request(
                request.method, request.url, data=request.body, headers=request.headers, timeout=self._timeout(timeouts)
            ) as r:
                return WireResponse(r.status, await r.read(), r.headers)
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, provider, request.url) from None

    @asynccontextmanager
    async def stream(
        self, request: WireRequest, timeouts: Timeouts, provider: str, on_error: ErrorMapper
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        """Open a streaming call; yields its SSE events. Non-2xx raises `on_error(...)`.

        The response head and the first body bytes must arrive within
        `timeouts.first_byte`; after that the body is read as it arrives with no
        overall bound (the caller may cancel, which closes the connection).
        """
        if self._httpx is not None:
            async with self._httpx_stream(request, timeouts, provider, on_error) as events:
                yield events
            return
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self._aiohttp().request(
                    request.method, request.url, data=request.body, headers=request.headers, timeout=timeout
                )
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, provider, request.url) from None
        try:
            if resp.status >= 300:
                raise on_error(WireResponse(resp.status, await _read_quietly(resp.read()), resp.headers))
            yield _events(resp.content.iter_any(), provider, request.url, timeouts.first_byte)
        finally:
            if resp.status < 300 and resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    @asynccontextmanager
    async def _httpx_stream(
        self, request: WireRequest, timeouts: Timeouts, provider: str, on_error: ErrorMapper
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        assert self._httpx is not None
        req = self._httpx.build_request(request.method, request.url, content=request.body, headers=request.headers)
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self._httpx.send(req, stream=True)
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, provider, request.url) from None
        try:
            if resp.status_code >= 300:
                raise on_error(WireResponse(resp.status_code, await _read_quietly(resp.aread()), resp.headers))
            yield _events(resp.aiter_bytes(), provider, request.url, timeouts.first_byte)
        finally:
            await resp.aclose()


async def _read_quietly(reading: Any) -> bytes:
    try:
        return await reading
    except _TRANSPORT_ERRORS:
        return b""


async def _events(chunks: AsyncIterator[bytes], provider: str, url: str, first_byte: float) -> AsyncIterator[SSEEvent]:
    decoder = SSEDecoder()
    it = chunks.__aiter__()
    try:
        async with asyncio.timeout(first_byte):
            first = await anext(it, b"")
        for event in decoder.feed(first):
            yield event
        async for chunk in it:
            for event in decoder.feed(chunk):
                yield event
    except _TRANSPORT_ERRORS as exc:
        raise transport_error(exc, provider, url) from None
    except ValueError as exc:  # an SSE line over the decoder's bound
        raise UpstreamError(f"provider {provider!r} sent a malformed stream: {exc}") from None
    for event in decoder.close():
        yield event
