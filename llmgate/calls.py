"""The call stage: route a request along its plan and run it through the adapters.

`execute` walks the router's plan (the model group, then its fallbacks),
retrying retryable failures with backoff. A stream is opened and read up to its
first item before the caller sees anything, so a failure before the first byte
can still fail over; after that, `StreamRelay` carries it to the surface.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

from llmgate import tokens
from llmgate.errors import GatewayError, InvalidRequest, ProviderDisabled, UpstreamError
from llmgate.gateway import Gateway
from llmgate.routing import Deployment
from llmgate.types import RequestContext, Usage
from providers.base import EmbeddingsCapable, StreamParser, WireRequest, WireResponse
from providers.sse import SSEEvent


async def execute(ctx: RequestContext, gw: Gateway) -> None:
    """Route the call and run it, retrying retryable failures along the plan."""
    plan = gw.router.plan(ctx.model)
    routing = gw.settings.routing
    deadline = time.monotonic() + routing.deadline_s
    last: GatewayError | None = None
    for i, dep in enumerate(plan):
        if i > routing.num_retries + _fallback_allowance(plan, ctx.model, i):
            break
        if i and last is not None:
            delay = _backoff(routing.backoff_base_s, routing.backoff_max_s, i, last.retry_after)
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
        ctx.attempts += 1
        ctx.deployment = dep
        try:
            await _attempt(ctx, gw, dep)
            return
        except GatewayError as exc:
            last = exc
            if not exc.retryable and not isinstance(exc, ProviderDisabled):
                raise
    assert last is not None
    raise last


def _fallback_allowance(plan: list[Deployment], model: str, index: int) -> int:
    """Fallback groups get their own tries on top of the retries of the primary group."""
    return sum(1 for d in plan[: index + 1] if d.model.name != model)


def _backoff(base: float, cap: float, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the upstream's Retry-After."""
    delay = random.uniform(0, min(cap, base * (2 ** (attempt - 1))))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


async def _attempt(ctx: RequestContext, gw: Gateway, dep: Deployment) -> None:
    provider = dep.provider
    if provider.settings.disabled_reason:
        raise ProviderDisabled(f"Provider `{provider.name}` is not configured ({provider.settings.disabled_reason}).")
    passthrough = ctx.wire == provider.wire_format
    wire = _build(ctx, dep, passthrough)
    ctx.upstream_started = time.perf_counter()
    dep.inflight += 1
    try:
        if ctx.stream:
            await _open_stream(ctx, gw, dep, wire, passthrough)
            return
        response = await provider.send(gw.client, wire, dep.timeouts)
    finally:
        if not ctx.stream or ctx.stream_iter is None:
            dep.inflight -= 1
    ctx.upstream_latency = time.perf_counter() - ctx.upstream_started
    if response.status >= 300:
        raise provider.map_error(response)
    _parse(ctx, dep, response, passthrough)


def _build(ctx: RequestContext, dep: Deployment, passthrough: bool) -> WireRequest:
    provider = dep.provider
    if ctx.surface == "embeddings":
        if not isinstance(provider, EmbeddingsCapable):
            raise InvalidRequest(f"The model `{ctx.model}` does not support embeddings.", param="model")
        return provider.build_embeddings_request(ctx.body, dep.upstream)
    if passthrough and ctx.native_body is not None:
        # The caller speaks this provider's own format (Anthropic -> Anthropic): forward its body.
        native = ctx.native_body
        if dep.model.max_tokens_cap is not None:
            native = _cap_max_tokens(native, dep.model.max_tokens_cap)
        return provider.build_native_request(native, dep.upstream, ctx.stream)  # type: ignore[attr-defined]
    body = ctx.body
    if dep.model.max_tokens_cap is not None:
        body = _cap_max_tokens(body, dep.model.max_tokens_cap)
    return provider.build_chat_request(body, dep.upstream, ctx.stream)


def _cap_max_tokens(body: dict[str, Any], cap: int) -> dict[str, Any]:
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body.get(field)
    if isinstance(asked, int) and asked <= cap:
        return body
    return {**body, field: cap}


def _parse(ctx: RequestContext, dep: Deployment, response: WireResponse, passthrough: bool) -> None:
    provider = dep.provider
    if ctx.surface == "embeddings":
        assert isinstance(provider, EmbeddingsCapable)
        ctx.response, ctx.usage = provider.parse_embeddings_response(response, dep.upstream, ctx.body)
        return
    if passthrough and ctx.native_body is not None:
        ctx.usage = provider.parse_native_response(response)  # type: ignore[attr-defined]
        ctx.response_raw = response.body
        return
    ctx.response, ctx.usage = provider.parse_chat_response(response, dep.upstream)
    if passthrough:
        ctx.response_raw = response.body


async def _open_stream(ctx: RequestContext, gw: Gateway, dep: Deployment, wire: WireRequest, passthrough: bool) -> None:
    """Open the upstream stream and read up to its first item before answering, so a
    failure before the first byte can still fail over to the next deployment."""
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(dep.provider.open_stream(gw.client, wire, dep.timeouts))
        relay = StreamRelay(ctx, lambda: dep.provider.new_stream_parser(dep.upstream, ctx.body), passthrough)
        iterator = events.__aiter__()
        first: list[Any] = []
        while not first:
            event = await anext(iterator, None)
            if event is None:
                first.extend(relay.end())
                break
            first.extend(relay.feed(event))
    except BaseException:
        await stack.aclose()
        raise
    ctx.first_token_at = time.perf_counter()
    ctx.stream_iter = relay.run(first, iterator, stack, dep)


class StreamRelay:
    """Carries one upstream stream to the surface and keeps what settling needs.

    On a pass-through stream the upstream's events are relayed untouched (the
    parser only sniffs usage and drops a usage chunk the caller did not ask for);
    otherwise the parser turns them into canonical chunks. Everything handed on is
    kept, so a stream cut short can be settled from what the caller received.
    """

    def __init__(self, ctx: RequestContext, new_parser: Callable[[], StreamParser], passthrough: bool) -> None:
        self.ctx = ctx
        self.new_parser = new_parser
        self.parser = new_parser()
        self.passthrough = passthrough
        self.sent: list[Any] = []
        self.chunk_meta: dict[str, Any] | None = None

    def feed(self, event: SSEEvent) -> list[Any]:
        if self.passthrough:
            forwarded = self.parser.relay(event, self.ctx.include_usage)
            if forwarded is None:
                return []
            self.sent.append(forwarded)
            return [forwarded]
        chunks = self.parser.feed(event)
        if chunks:
            if self.chunk_meta is None:
                c = chunks[0]
                self.chunk_meta = {"id": c.get("id"), "created": c.get("created"), "model": c.get("model")}
            self.sent.extend(chunks)
        return chunks

    def end(self) -> list[Any]:
        """End of the upstream body: closing chunks, then the usage chunk if asked for."""
        out = [] if self.passthrough else self.parser.finish()
        self.sent.extend(out)
        if not self.passthrough and self.ctx.include_usage and self.parser.usage is not None:
            meta = self.chunk_meta or {"id": f"chatcmpl-{self.ctx.request_id}", "created": int(time.time())}
            out.append(
                {
                    "id": meta.get("id"),
                    "object": "chat.completion.chunk",
                    "created": meta.get("created"),
                    "model": meta.get("model") or self.ctx.model,
                    "choices": [],
                    "usage": self.parser.usage.to_openai(),
                }
            )
        return out

    async def run(
        self, first: list[Any], events: AsyncIterator[SSEEvent], stack: AsyncExitStack, dep: Deployment
    ) -> AsyncIterator[Any]:
        try:
            for item in first:
                yield item
            if not first or not self.parser.done:
                async for event in events:
                    for item in self.feed(event):
                        yield item
                for item in self.end():
                    yield item
            if not self.parser.done:
                raise UpstreamError(f"provider {dep.provider.name!r} ended the stream early")
        finally:
            dep.inflight -= 1
            self.ctx.upstream_latency = time.perf_counter() - self.ctx.upstream_started
            self.ctx.usage = self.usage()
            await stack.aclose()

    def usage(self) -> Usage:
        """The provider's figure if it sent one; otherwise an estimate from what was sent."""
        if self.parser.usage is not None and self.parser.done:
            return self.parser.usage
        ctx = self.ctx
        text = "".join(_chunk_text(c) for c in self._sent_chunks())
        prompt = ctx.prompt_tokens or tokens.count_request(ctx.body, ctx.model)
        usage = self.parser.usage or Usage(input_tokens=prompt)
        usage.input_tokens = usage.input_tokens or prompt
        usage.output_tokens = max(usage.output_tokens, tokens.count_text(text, ctx.model))
        usage.estimated = True
        return usage

    def _sent_chunks(self) -> list[dict[str, Any]]:
        if not self.passthrough:
            return [c for c in self.sent if isinstance(c, dict)]
        replay = self.new_parser()
        chunks: list[dict[str, Any]] = []
        for event in self.sent:
            try:
                chunks.extend(replay.feed(event))
            except (GatewayError, ValueError):
                continue
        return chunks


def _chunk_text(chunk: dict[str, Any]) -> str:
    out = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str):
            out.append(content)
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") or {}
            out.append(fn.get("name") or "")
            out.append(fn.get("arguments") or "")
    return "".join(out)
