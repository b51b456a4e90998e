"""The settle stage: cost, limiter release and the usage record, exactly once, whatever fails."""

from __future__ import annotations

import logging

import pytest

from llmgate import pipeline
from llmgate.config import parse_settings
from llmgate.errors import UpstreamError
from llmgate.gateway import Gateway, MasterKeyAuthenticator
from llmgate.logs import reset_logging
from llmgate.routing import Router, build_providers
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
