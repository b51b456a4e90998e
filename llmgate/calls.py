"""The call stage: route a request through its model group and fallbacks, and run it.

`execute` tries the model's group, then its `fallbacks` in order (a context
window error goes to `context_window_fallbacks` instead). Within a group the
router picks a deployment per attempt; retryable failures (connect errors,
timeouts, 429, 5xx) are retried up to `num_retries` more times with exponential
backoff and full jitter, never sooner than the upstream's Retry-After when the
same deployment is tried again, and never past the call's deadline. Caller
errors (4xx) are never retried.

A stream is opened and read up to its first item before the caller sees
anything, so a failure before the first byte can still fail over; after that,
`StreamRelay` carries it to the surface and a failure ends it with an error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

from llmgate import tokens
from llmgate.errors import (
    ContextWindowExceeded,
    GatewayError,
    InvalidRequest,
    ProviderDisabled,
    Throttled,
    UpstreamError,
    UpstreamTimeout,
)
from llmgate.gateway import Gateway
from llmgate.routing import Attempt, Deployment, Group, Router
from llmgate.types import RequestContext, Usage
from providers.base import EmbeddingsCapable, StreamParser, WireRequest, WireResponse
from providers.sse import SSEEvent


async def execute(ctx: RequestContext, gw: Gateway) -> None:
    """Run the call on its model's group, then on the fallback groups until one answers."""
    router: Router = gw.router
    deadline = time.monotonic() + router.routing.deadline_s
    primary = router.group(ctx.model)
    chain = [primary.name, *primary.fallbacks]
    on_context_chain = False
    last: GatewayError | None = None
    i = 0
    while i < len(chain):
        if last is not None:
            if time.monotonic() >= deadline:
                break
            router.stats.fallbacks += 1
        group = router.group(chain[i])
        i += 1
        try:
            await _run_group(ctx, gw, group, deadline)
            return
        except ContextWindowExceeded as exc:
            last = exc
            if not on_context_chain:
                chain, i, on_context_chain = list(primary.context_window_fallbacks), 0, True
        except GatewayError as exc:
            if not (exc.retryable or isinstance(exc, ProviderDisabled | Throttled)):
                raise
            last = exc
    assert last is not None
    raise last


async def _run_group(ctx: RequestContext, gw: Gateway, group: Group, deadline: float) -> None:
    """Up to 1 + num_retries attempts on one group, rotating over its deployments."""
    router: Router = gw.router
    routing = router.routing
    need_tokens = _token_estimate(ctx) if group.tpm_limited else 0
    tried: list[Deployment] = []
    not_before: dict[Deployment, float] = {}  # a deployment's Retry-After, as a monotonic time
    last: GatewayError | None = None
    for n in range(routing.num_retries + 1):
        attempt = await router.pick(group, tried, need_tokens)
        dep = attempt.deployment
        if last is not None:
            now = time.monotonic()
            delay = backoff_delay(routing.backoff_base_s, routing.backoff_max_s, n, not_before.get(dep, now) - now)
            if now + delay >= deadline:
                router.abandoned(attempt)
                raise last
            try:
                await asyncio.sleep(delay)
            except BaseException:
                router.abandoned(attempt)
                raise
        tried.append(dep)
        ctx.attempts += 1
        ctx.deployment = dep
        if ctx.attempts > 1:
            router.stats.retries += 1
        try:
            await _bounded_attempt(ctx, gw, attempt, deadline)
            return
        except GatewayError as exc:
            router.failed(attempt, exc)
            if not exc.retryable:
                raise
            last = exc
            if exc.retry_after is not None:
                not_before[dep] = time.monotonic() + exc.retry_after
        except BaseException:
            router.abandoned(attempt)
            raise
    assert last is not None
    raise last


async def _bounded_attempt(ctx: RequestContext, gw: Gateway, attempt: Attempt, deadline: float) -> None:
    """The first attempt is bounded by its timeouts (never beyond the deadline, see
    routing.build_timeouts); a later one also by what is left of the deadline."""
    if ctx.attempts == 1:
        await _attempt(ctx, gw, attempt)
        return
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            await _attempt(ctx, gw, attempt)
    except TimeoutError:
        raise UpstreamTimeout(f"provider {attempt.deployment.provider.name!r} timed out (call deadline)") from None


def _token_estimate(ctx: RequestContext) -> int:
    """Tokens to count against a deployment's own `tpm` before the call: the limiter's
    reservation when it made one, else the prompt plus the requested maximum output."""
    if ctx.reserved_tokens:
        return ctx.reserved_tokens
    asked = ctx.body.get("max_completion_tokens") or ctx.body.get("max_tokens")
    prompt = ctx.prompt_tokens or tokens.count_request(ctx.body, ctx.model)
    return prompt + (asked if isinstance(asked, int) else 0)


def backoff_delay(base: float, cap: float, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; never shorter than the Retry-After still to wait."""
    delay = random.uniform(0, min(cap, base * (2 ** (attempt - 1))))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


async def _attempt(ctx: RequestContext, gw: Gateway, attempt: Attempt) -> None:
    dep = attempt.deployment
    provider = dep.provider
    if provider.settings.disabled_reason:
        raise ProviderDisabled(f"Provider `{provider.name}` is not configured ({provider.settings.disabled_reason}).")
    passthrough = ctx.wire == provider.wire_format
    wire = _build(ctx, dep, passthrough)
    ctx.upstream_started = time.perf_counter()
    dep.inflight += 1
    if ctx.stream:
        try:
            await _open_stream(ctx, gw, attempt, wire, passthrough)
        except BaseException:
            dep.inflight -= 1
            raise
        return
    try:
        response = await provider.send(gw.client, wire, dep.timeouts)
    finally:
        dep.inflight -= 1
    ctx.upstream_latency = time.perf_counter() - ctx.upstream_started
    if response.status >= 300:
        raise provider.map_error(response)
    router: Router = gw.router
    router.succeeded(attempt, ctx.upstream_latency)
    _parse(ctx, dep, response, passthrough)
    if attempt.charged_tokens and ctx.usage is not None:
        router.settle_tokens(attempt, ctx.usage.total_tokens)


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


async def _open_stream(
    ctx: RequestContext, gw: Gateway, attempt: Attempt, wire: WireRequest, passthrough: bool
) -> None:
    """Open the upstream stream and read up to its first item before answering, so a
    failure before the first byte can still fail over to the next deployment."""
    dep = attempt.deployment
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
    router: Router = gw.router
    router.succeeded(attempt, ctx.first_token_at - ctx.upstream_started)
    ctx.stream_iter = relay.run(first, iterator, stack, attempt, router)


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
        self,
        first: list[Any],
        events: AsyncIterator[SSEEvent],
        stack: AsyncExitStack,
        attempt: Attempt,
        router: Router,
    ) -> AsyncIterator[Any]:
        dep = attempt.deployment
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
        except GatewayError as exc:
            router.failed(attempt, exc)
            raise
        except Exception as exc:  # an upstream stream the parser cannot read: never a traceback
            err = UpstreamError(f"provider {dep.provider.name!r} sent a stream the gateway cannot read")
            router.failed(attempt, err)
            raise err from exc
        finally:
            dep.inflight -= 1
            self.ctx.upstream_latency = time.perf_counter() - self.ctx.upstream_started
            self.ctx.usage = usage = self.usage()
            if attempt.charged_tokens:
                router.settle_tokens(attempt, usage.total_tokens)
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
