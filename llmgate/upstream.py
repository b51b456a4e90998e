"""The one HTTP client every adapter sends through (the gateway's only upstream I/O).

The httpx API over the aiohttp transport (`httpx-aiohttp`): httpx's own pool caps
a proxy under concurrency (../shared/bench/STACKS.md), the aiohttp transport does
not, and tests can still intercept with `respx.mock(using="httpx")`. Transport
failures are translated here, once, into gateway errors that name the provider
and never its key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from llmgate.config import Timeouts
from llmgate.errors import GatewayError, UpstreamError, UpstreamTimeout
from providers.base import WireRequest, WireResponse
from providers.sse import SSEDecoder, SSEEvent

ErrorMapper = Callable[[WireResponse], GatewayError]


def _transport_error(exc: Exception, provider: str, url: str) -> GatewayError:
    # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout; the
    # aiohttp exception it wraps says what really happened.
    cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError | asyncio.TimeoutError) else exc
    if isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, asyncio.TimeoutError):
        return UpstreamError(f"provider {provider!r} is unreachable ({httpx.URL(url).host})")
    if isinstance(cause, httpx.TimeoutException | asyncio.TimeoutError):
        return UpstreamTimeout(f"provider {provider!r} timed out")
    if isinstance(cause, httpx.ConnectError):
        return UpstreamError(f"provider {provider!r} is unreachable ({httpx.URL(url).host})")
    return UpstreamError(f"provider {provider!r} connection failed ({type(cause).__name__})")


class UpstreamClient:
    """Pooled keep-alive client owned by the app lifespan."""

    def __init__(self, max_connections: int = 1000, transport: httpx.AsyncBaseTransport | None = None) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            transport=transport or AiohttpTransport(limits=limits),
            timeout=None,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, request: WireRequest, timeouts: Timeouts, provider: str) -> WireResponse:
        """One request/response within `timeouts.total`."""
        timeout = httpx.Timeout(timeouts.total, connect=timeouts.connect)
        try:
            async with asyncio.timeout(timeouts.total):
                resp = await self._client.request(
                    request.method, request.url, content=request.body, headers=request.headers, timeout=timeout
                )
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            raise _transport_error(exc, provider, request.url) from None
        return WireResponse(resp.status_code, resp.content, resp.headers)

    @asynccontextmanager
    async def stream(
        self, request: WireRequest, timeouts: Timeouts, provider: str, on_error: ErrorMapper
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        """Open a streaming call; yields its SSE events. Non-2xx raises `on_error(...)`.

        The wait for the response head is bounded by `timeouts.first_byte`; the
        body is read as it arrives with no overall bound (the caller may cancel).
        """
        timeout = httpx.Timeout(None, connect=timeouts.connect)
        req = self._client.build_request(
            request.method, request.url, content=request.body, headers=request.headers, timeout=timeout
        )
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self._client.send(req, stream=True)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            raise _transport_error(exc, provider, request.url) from None
        try:
            if resp.status_code >= 300:
                try:
                    body = await resp.aread()
                except (httpx.HTTPError, OSError):
                    body = b""
                raise on_error(WireResponse(resp.status_code, body, resp.headers))
            yield _events(resp, provider, request.url, timeouts.first_byte)
        finally:
            await resp.aclose()


async def _events(resp: httpx.Response, provider: str, url: str, first_byte: float) -> AsyncIterator[SSEEvent]:
    decoder = SSEDecoder()
    # Raw bytes unless they need decoding (or a test transport already read them).
    plain = not resp.headers.get("content-encoding") and not resp.is_stream_consumed
    raw = resp.aiter_raw() if plain else resp.aiter_bytes()
    it = raw.__aiter__()
    try:
        async with asyncio.timeout(first_byte):
            first = await anext(it, b"")
    except (httpx.HTTPError, TimeoutError, OSError) as exc:
        raise _transport_error(exc, provider, url) from None
    for event in decoder.feed(first):
        yield event
    try:
        async for chunk in it:
            for event in decoder.feed(chunk):
                yield event
    except (httpx.HTTPError, OSError) as exc:
        raise _transport_error(exc, provider, url) from None
    for event in decoder.close():
        yield event
