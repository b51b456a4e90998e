"""The adapter protocol every provider implements, and the defaults they share.

An adapter builds the wire request (pure), sends it through the shared upstream
client (the only I/O), parses the response (pure), parses stream events into
canonical OpenAI chunks (pure, with a small state object) and maps errors (pure).
Embeddings are an optional capability: a separate protocol checked with
`isinstance`, never a stub.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from llmgate.errors import (
    ContextWindowExceeded,
    GatewayError,
    UpstreamCallerError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llmgate.types import Usage
from providers.sse import SSEEvent

if TYPE_CHECKING:
    from llmgate.config import ProviderSettings, Timeouts
    from llmgate.upstream import UpstreamClient


@dataclass(slots=True)
class WireRequest:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


@dataclass(slots=True)
class WireResponse:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names


class StreamParser(Protocol):
    """Turns one upstream stream into canonical chat.completion.chunk dicts.

    `feed` returns the chunks an event produces (often none) and raises a
    GatewayError for an in-stream error event. `finish` is called at the end of
    the body and may emit closing chunks. `usage` is the provider's final figure
    once known; `done` tells whether the upstream ended the stream properly.
    """

    usage: Usage | None
    done: bool

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...

    def relay(self, event: SSEEvent, include_usage: bool) -> SSEEvent | None:
        """Pass-through mode (caller and upstream speak this provider's format):
        track usage and completion, and return the event to forward untouched, or
        None to drop it (OpenAI's usage chunk when the caller did not ask for it).
        Only parsers of providers whose `wire_format` is an ingress format need it."""
        ...


class Provider:
    """Base of every chat adapter: I/O through the shared client, nothing else.

    Subclasses set `type` (the config word and registry key) and `wire_format`
    (the ingress format that may be passed through untranslated), and implement
    the four pure methods.
    """

    type: ClassVar[str]
    wire_format: ClassVar[str]

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        self.name = name
        self.settings = settings

    # -- pure translation -------------------------------------------------
    def build_chat_request(self, body: dict[str, Any], upstream_model: str, stream: bool) -> WireRequest:
        raise NotImplementedError

    def parse_chat_response(self, response: WireResponse, upstream_model: str) -> tuple[dict[str, Any], Usage]:
        raise NotImplementedError

    def new_stream_parser(self, upstream_model: str, body: dict[str, Any]) -> StreamParser:
        raise NotImplementedError

    def map_error(self, response: WireResponse) -> GatewayError:
        raise NotImplementedError

    def build_native_request(self, body: dict[str, Any], upstream_model: str, stream: bool) -> WireRequest:
        """A body already in this provider's own format (a pass-through); OpenAI's is the canonical one."""
        return self.build_chat_request(body, upstream_model, stream)

    def parse_native_response(self, response: WireResponse) -> Usage:
        """The usage of a pass-through answer that is relayed as is."""
        return self.parse_chat_response(response, "")[1]

    # -- I/O ----------------------------------------------------------------
    async def send(self, client: UpstreamClient, request: WireRequest, timeouts: Timeouts) -> WireResponse:
        return await client.send(request, timeouts, provider=self.name)

    @asynccontextmanager
    async def open_stream(
        self, client: UpstreamClient, request: WireRequest, timeouts: Timeouts
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        """Yield the upstream's SSE events; a non-2xx answer raises `map_error(...)`."""
        async with client.stream(request, timeouts, provider=self.name, on_error=self.map_error) as events:
            yield events


@runtime_checkable
class EmbeddingsCapable(Protocol):
    """Optional capability: OpenAI-style embeddings through this provider."""

    def build_embeddings_request(self, body: dict[str, Any], upstream_model: str) -> WireRequest: ...

    def parse_embeddings_response(
        self, response: WireResponse, upstream_model: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], Usage]: ...


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds; HTTP dates are ignored)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def map_http_error(
    provider: str,
    response: WireResponse,
    message: str | None,
    code: str | None = None,
    param: str | None = None,
) -> GatewayError:
    """One mapping from an upstream HTTP status to the gateway's error, for every adapter.

    Caller-caused statuses (400, 404, 413, 422) keep their status and are never
    retried; a refused credential is the gateway's problem (502, tried elsewhere);
    429 and 5xx are retryable, 529 (Anthropic's "overloaded") becomes 503.
    """
    status = response.status
    text = message or f"HTTP {status}"
    retry_after = parse_retry_after(response.headers)
    if status in (401, 403):
        return UpstreamError(f"provider {provider!r} rejected the gateway's credentials ({status}): {text}")
    if status == 429:
        return UpstreamRateLimited(
            f"provider {provider!r} is rate limiting: {text}",
            code=code or "rate_limit_exceeded",
            retry_after=retry_after,
        )
    if status == 400 and (code == "context_length_exceeded" or "context length" in text.lower()):
        return ContextWindowExceeded(text, param=param or "messages")
    if 400 <= status < 500 and status != 408:
        return UpstreamCallerError(text, status=status, code=code, param=param)
    if status in (503, 529):
        return UpstreamUnavailable(f"provider {provider!r} is overloaded: {text}", retry_after=retry_after)
    if status in (408, 504):
        return UpstreamTimeout(f"provider {provider!r} timed out: {text}")
    return UpstreamError(f"provider {provider!r} failed ({status}): {text}", retry_after=retry_after)
