"""The settle stage: cost, limiter release and the usage record, exactly once, whatever fails."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from llmgate import pipeline
from llmgate.config import parse_settings
from llmgate.cost import format_usd
from llmgate.errors import UpstreamError
from llmgate.gateway import Gateway, MasterKeyAuthenticator
from llmgate.logs import reset_logging
from llmgate.routing import Router, build_providers
from llmgate.surfaces.anthropic import AnthropicSurface
from llmgate.surfaces.openai import OpenAISurface
from llmgate.types import RequestContext, Usage


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[RequestContext] = []

    def record(self, ctx: RequestContext) -> None:
        self.records.append(ctx)


class FailingLimiter:
    async def admit(self, ctx: RequestContext) -> None:
        ctx.admission = object()

    async def settle(self, ctx: RequestContext) -> None:
        raise RuntimeError("redis went away")


def _gateway() -> Gateway:
    settings = parse_settings(
        {
            "gateway": {"master_key": "sk-test-master"},
            "providers": {"mock": {"type": "mock"}},
            "models": [{"name": "m", "provider": "mock", "price": {"input": 2, "output": 4}}],
        },
        "test",
    )
    return Gateway(
        settings=settings,
        client=None,
        router=Router(settings, build_providers(settings)),
        auth=MasterKeyAuthenticator(settings),
        limiter=FailingLimiter(),
        usage=RecordingSink(),
    )


def _ctx(gw: Gateway) -> RequestContext:
    ctx = RequestContext(request_id="r1", surface="chat", token=None, body={}, model="m")
    ctx.deployment = gw.router.groups["m"][0]
    ctx.admission = object()
    ctx.usage = Usage(input_tokens=1000, output_tokens=500)
    return ctx


async def test_a_failing_limiter_settlement_still_records_once(caplog: pytest.LogCaptureFixture) -> None:
    reset_logging()  # an earlier gateway may have turned propagation off
    gw = _gateway()
    ctx = _ctx(gw)
    with caplog.at_level(logging.ERROR, logger="llmgate.pipeline"):
        await pipeline.settle(ctx, gw)
        await pipeline.settle(ctx, gw)
    assert gw.usage.records == [ctx]
    assert ctx.cost_nusd == (1000 * 2 + 500 * 4) * 1000  # USD per 1M tokens -> nano-USD
    assert "limiter settle failed for request r1" in caplog.text


async def test_failed_call_costs_nothing_unless_tokens_were_estimated() -> None:
    gw = _gateway()
    ctx = _ctx(gw)
    ctx.error = UpstreamError("boom")
    await pipeline.settle(ctx, gw)
    assert ctx.status == 502 and ctx.cost_nusd == 0
    cut = _ctx(gw)
    cut.error = UpstreamError("cut mid-stream")
    cut.usage = Usage(input_tokens=1000, output_tokens=10, estimated=True)
    await pipeline.settle(cut, gw)
    assert cut.cost_nusd == (1000 * 2 + 10 * 4) * 1000


class BlockingLimiter:
    """Admits at once; each settlement waits until the test lets it go."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.settled: list[str] = []

    async def admit(self, ctx: RequestContext) -> None:
        ctx.admission = object()

    async def settle(self, ctx: RequestContext) -> None:
        await self.release.wait()
        self.settled.append(ctx.request_id)


def _asgi_call(body: dict[str, Any], path: str) -> tuple[dict[str, Any], Any, Any, list[dict[str, Any]]]:
    raw = orjson.dumps(body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"x-request-id", b"rid-1"), (b"authorization", b"Bearer sk-test-master")],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return scope, receive, send, sent


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
async def test_the_answer_leaves_before_the_settlement_and_is_recorded_once(surface: str) -> None:
    gw = _gateway()
    limiter = gw.limiter = BlockingLimiter()
    if surface == "openai":
        handler = OpenAISurface(gw).chat
        scope, receive, send, sent = _asgi_call({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "/")
    else:
        handler = AnthropicSurface(gw).messages
        scope, receive, send, sent = _asgi_call(
            {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}, "/"
        )
    task = asyncio.create_task(handler(scope, receive, send))
    for _ in range(100):
        if len(sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    cost = dict(sent[0]["headers"])[b"x-llmgate-cost-usd"]
    assert not task.done() and limiter.settled == [] and gw.usage.records == []
    limiter.release.set()
    await task
    assert limiter.settled == ["rid-1"]
    [record] = gw.usage.records
    assert format_usd(record.cost_nusd).encode() == cost and record.cost_nusd > 0
