"""The one HTTP client every adapter sends through (the gateway's only upstream I/O).

Production traffic goes through the small HTTP/1.1 client of llmgate/http1.py:
measured in front of the bench kit's fake upstream, the httpx API (even over the
aiohttp transport) spent ~0.8 ms of CPU per proxied call, most of it in httpx's
request, URL and header models, aiohttp alone ~0.15 ms, http1.py ~0.05 ms
(../shared/bench/STACKS.md shows the first ratio). Tests can hand in an httpx transport instead, so adapter
tests keep `respx.mock(using="httpx")`; both paths share the error translation
and the SSE decoding below. Transport failures are translated here, once, into
gateway errors that name the provider and never its key.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from llmgate.config import Timeouts
from llmgate.errors import GatewayError, UpstreamError, UpstreamTimeout
from llmgate.http1 import Http1Client, UpstreamUnreachable
from providers.base import WireRequest, WireResponse
from providers.sse import SSEDecoder, SSEEvent

if TYPE_CHECKING:
    import httpx

ErrorMapper = Callable[[WireResponse], GatewayError]

# httpx is imported only when a test hands in an httpx transport (it costs ~0.2 s of
# start-up and a few MB that production never uses); its errors count only then.
_HTTP1_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, OSError)
_TRANSPORT_ERRORS = _HTTP1_ERRORS


def _with_httpx_errors() -> None:
    global _TRANSPORT_ERRORS
    import httpx

    _TRANSPORT_ERRORS = (*_HTTP1_ERRORS, httpx.HTTPError)


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def transport_error(exc: BaseException, provider: str, url: str) -> GatewayError:
    """A connection-level failure as the gateway's error: 504 for timeouts, 502 otherwise."""
    httpx = sys.modules.get("httpx")
    connect_errors = (UpstreamUnreachable, httpx.ConnectError) if httpx else UpstreamUnreachable
    timeouts = (TimeoutError, httpx.TimeoutException) if httpx else TimeoutError
    if isinstance(exc, connect_errors) and not isinstance(exc, TimeoutError):
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            # Named, or an operator sees only "unreachable" for a certificate or host name problem.
            reason = cause.verify_message or "certificate verification failed"
            return UpstreamError(
                f"provider {provider!r} is unreachable ({_host(url)}): TLS certificate refused: {reason}"
            )
        return UpstreamError(f"provider {provider!r} is unreachable ({_host(url)})")
    if isinstance(exc, timeouts):
        return UpstreamTimeout(f"provider {provider!r} timed out")
    return UpstreamError(f"provider {provider!r} connection failed ({type(exc).__name__})")


class UpstreamClient:
    """Pooled keep-alive client owned by the app lifespan.

    `transport`: an httpx transport for tests (respx); None is llmgate/http1.py.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = Http1Client(keepalive_s=60.0)
        self._httpx: httpx.AsyncClient | None = None
        if transport is not None:
            import httpx

            _with_httpx_errors()
            self._httpx = httpx.AsyncClient(transport=transport, timeout=None)

    async def aclose(self) -> None:
        await self._http.aclose()
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
            async with asyncio.timeout(timeouts.total):
                status, headers, body = await self._http.request(
                    request.method, request.url, request.headers, request.body, timeouts.connect
                )
            return WireResponse(status, body, headers)
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
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self._http.open(
                    request.method, request.url, request.headers, request.body, timeouts.connect
                )
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, provider, request.url) from None
        try:
            if resp.status >= 300:
                raise on_error(WireResponse(resp.status, await _read_quietly(resp.read()), resp.headers))
            yield _events(resp.iter_chunks(), provider, request.url, timeouts.first_byte)
        finally:
            Http1Client.finish(resp)  # back to the pool when read to the end; closed otherwise

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
