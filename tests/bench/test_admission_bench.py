"""Admission and settlement with three scopes in force (global, team, key), in memory."""

from __future__ import annotations

from typing import Any

from llmgate.throttle import build_limiter
from llmgate.types import KeyInfo, RequestContext, Usage
from tests.bench.conftest import run_now
from tests.throttle.conftest import make_settings

HIGH = {"rpm": 100_000_000, "tpm": 10_000_000_000}


def build_three_scope_limiter() -> Any:
    settings = make_settings(
        providers={"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk"}},
        models=[{"name": "m", "provider": "up", "price": {"input": 1, "output": 2}}],
        throttle={"global": HIGH, "teams": {"bench": HIGH}},
    )
    return build_limiter(settings)


def build_ctx(key: KeyInfo) -> RequestContext:
    body = {"model": "m", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
    body["max_tokens"] = 32
    return RequestContext(request_id="r", surface="chat", token=None, body=body, model="m", key=key)


def test_admit_and_settle_three_scopes(benchmark: Any) -> None:
    limiter = build_three_scope_limiter()
    key = KeyInfo(id="k1", name="bench", team="bench", **HIGH)

    def admit_and_settle() -> RequestContext:
        ctx = build_ctx(key)
        run_now(limiter.admit(ctx))
        ctx.usage = Usage(input_tokens=ctx.prompt_tokens, output_tokens=9)
        ctx.cost_nusd = 1234
        run_now(limiter.settle(ctx))
        return ctx

    ctx = benchmark(admit_and_settle)
    assert ctx.admission is not None
    assert [scope.kind for scope in ctx.admission.plan.scopes] == ["global", "team", "key"]
    assert ctx.headers["x-ratelimit-limit-requests"] == str(HIGH["rpm"])
    assert limiter.stats["admitted"] >= 1
    assert limiter.backend.inflight() == 0
