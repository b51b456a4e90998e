"""Step-function policies: every signal, matching, hysteresis, the step header and view."""

from __future__ import annotations

import pytest

from llmgate.config import PolicyStep
from llmgate.errors import Throttled, UpstreamError
from llmgate.throttle import ThrottleLimiter
from llmgate.throttle.policies import Hysteresis, map_signal_to_step
from llmgate.types import KeyInfo, RequestContext

from .conftest import FakeClock, finish, make_ctx, make_key, make_settings


def policy(name: str, signal: str, steps: list[dict], **extra: object) -> dict:
    return {"name": name, "signal": signal, "steps": steps, **extra}


async def admitted(limiter: ThrottleLimiter, key: KeyInfo) -> RequestContext | None:
    ctx = make_ctx(key)
    try:
        await limiter.admit(ctx)
    except Throttled:
        return None
    return ctx


def test_the_step_in_force_is_the_last_threshold_exceeded():
    steps = [PolicyStep(above=0), PolicyStep(above=10), PolicyStep(above=20)]
    assert [map_signal_to_step(steps, v) for v in (0, 5, 10, 10.5, 20, 21, 1e9)] == [0, 0, 0, 1, 1, 2, 2]
    assert map_signal_to_step([PolicyStep(above=5), PolicyStep(above=9)], 1) == 0


def test_hysteresis_rises_at_once_and_falls_after_the_cooldown():
    state = Hysteresis()
    assert state.update(2, now=0, cooldown_s=10) == 2
    assert state.update(0, now=1, cooldown_s=10) == 2  # below since t=1
    assert state.update(1, now=10.9, cooldown_s=10) == 2
    assert state.update(1, now=11, cooldown_s=10) == 1
    assert state.update(2, now=12, cooldown_s=10) == 2
    assert state.update(0, now=13, cooldown_s=10) == 2
    assert state.update(2, now=14, cooldown_s=10) == 2  # back above: the cooldown starts over
    assert state.update(0, now=15, cooldown_s=10) == 2
    assert state.update(0, now=24.9, cooldown_s=10) == 2
    assert state.update(0, now=25, cooldown_s=10) == 0
    assert Hysteresis().update(3, 0, 0) == 3


async def test_tokens_today_tiers_per_key_with_cooldown(clock: FakeClock):
    clock.now = 1_790_035_200.0 - 100  # 100 s before a UTC midnight
    settings = make_settings(
        throttle={
            "policies": [
                policy(
                    "daily-tiers",
                    "tokens_today",
                    [{"above": 0, "rpm": 600}, {"above": 100, "rpm": 2}, {"above": 300, "rpm": 0}],
                    cooldown_s=30,
                )
            ]
        }
    )
    limiter = ThrottleLimiter(settings, clock=clock)
    key, other = make_key("k1"), make_key("k2")
    ctx = await admitted(limiter, key)
    assert ctx is not None and "x-llmgate-throttle-step" not in ctx.headers
    assert ctx.headers["x-ratelimit-limit-requests"] == "600"
    await limiter.settle(finish(ctx, input_tokens=60, output_tokens=41))  # 101 tokens today
    ctx = await admitted(limiter, key)
    assert ctx is not None
    assert ctx.headers["x-llmgate-throttle-step"] == "daily-tiers/1"
    assert ctx.headers["x-ratelimit-limit-requests"] == "2"
    await limiter.settle(finish(ctx, input_tokens=100, output_tokens=100))  # 301
    with pytest.raises(Throttled, match=r"key 'k1' \(rpm 0, policy daily-tiers/2\)") as info:
        await limiter.admit(make_ctx(key))
    assert info.value.headers["x-llmgate-throttle-step"] == "daily-tiers/2"
    assert await admitted(limiter, other) is not None  # the signal is per key
    view = limiter.step_in_force(key)
    assert view == [
        {
            "policy": "daily-tiers",
            "scope": "key",
            "signal": "tokens_today",
            "value": 301,
            "step": 2,
            "above": 300,
            "limits": {"rpm": 0},
        }
    ]
    clock.advance(101)  # a new UTC day: tokens today is 0, but the cooldown holds the step
    assert await admitted(limiter, key) is None
    clock.advance(29)
    assert await admitted(limiter, key) is None
    clock.advance(1.5)
    ctx = await admitted(limiter, key)
    assert ctx is not None and "x-llmgate-throttle-step" not in ctx.headers


async def test_spend_signals_use_the_keys_spend_today_and_this_month(clock: FakeClock):
    settings = make_settings(
        throttle={
            "policies": [
                policy("day", "spend_today_usd", [{"above": 0}, {"above": 1, "rpm": 1}]),
                policy("month", "spend_month_usd", [{"above": 0}, {"above": 3, "rpm": 0}]),
            ]
        }
    )
    limiter = ThrottleLimiter(settings, clock=clock)
    key = make_key()
    ctx = await admitted(limiter, key)
    assert ctx is not None
    await limiter.settle(finish(ctx, cost_nusd=1_500_000_000))
    ctx = await admitted(limiter, key)
    assert ctx is not None and ctx.headers["x-llmgate-throttle-step"] == "day/1"
    assert await admitted(limiter, key) is None  # rpm 1 now
    clock.advance(2 * 86400)  # another day of the same month (the fake clock starts on the 21st)
    await limiter.settle(finish(ctx, cost_nusd=2_000_000_000))  # settles into its own (earlier) day
    with pytest.raises(Throttled, match="policy month/1"):
        await limiter.admit(make_ctx(key))
    assert [s["step"] for s in limiter.step_in_force(key)] == [0, 1]


async def test_shedding_batch_traffic_under_load_leaves_interactive_keys_alone(clock: FakeClock):
    settings = make_settings(
        limits={"rpm": 600},
        throttle={
            "policies": [
                policy(
                    "shed-batch-under-load",
                    "inflight",
                    [{"above": 0, "rpm": 600}, {"above": 2, "rpm": 1}, {"above": 4, "rpm": 0}],
                    match={"priority": "batch"},
                    cooldown_s=10,
                )
            ]
        },
    )
    limiter = ThrottleLimiter(settings, clock=clock)
    batch, interactive = make_key("batch", priority="batch"), make_key("web", priority="interactive")
    load = [await admitted(limiter, interactive) for _ in range(5)]  # 5 in flight
    assert all(c is not None and "x-llmgate-throttle-step" not in c.headers for c in load)
    with pytest.raises(Throttled, match=r"policy shed-batch-under-load/2"):
        await limiter.admit(make_ctx(batch))
    assert limiter.step_in_force(interactive) == []
    for ctx in load[:2]:
        await limiter.settle(finish(ctx))  # 3 in flight: step 1 is due, after the cooldown
    assert await admitted(limiter, batch) is None
    clock.advance(10)
    shed = await admitted(limiter, batch)
    assert shed is not None and shed.headers["x-llmgate-throttle-step"] == "shed-batch-under-load/1"
    assert await admitted(limiter, batch) is None  # rpm 1
    for ctx in [*load[2:], shed]:
        await limiter.settle(finish(ctx))
    clock.advance(10)
    assert limiter.step_in_force(batch)[0]["step"] == 0
    assert await admitted(limiter, interactive) is not None


async def test_upstream_error_rate_closes_a_model_scope_until_errors_fade(clock: FakeClock):
    settings = make_settings(
        throttle={
            "error_rate_window_s": 60,
            "policies": [
                policy(
                    "breaker",
                    "upstream_error_rate",
                    [{"above": 0}, {"above": 0.5, "rpm": 0}],
                    scope="model",
                    cooldown_s=5,
                )
            ],
        }
    )
    limiter = ThrottleLimiter(settings, clock=clock)
    key = make_key()
    for failure in (None, "status", "error"):  # 0, 1/2 (not above 0.5), then 2/3
        ctx = await admitted(limiter, key)
        assert ctx is not None
        if failure == "status":
            ctx.status = 503
        elif failure == "error":
            ctx.error = UpstreamError("boom")
        await limiter.settle(ctx)
    with pytest.raises(Throttled, match=r"model 'gpt-4o' \(rpm 0, policy breaker/1\)"):
        await limiter.admit(make_ctx(key))  # 2 of 3 failed
    clock.advance(62)  # the failures left the window; the cooldown starts when that is seen
    assert await admitted(limiter, key) is None
    clock.advance(5)
    assert await admitted(limiter, key) is not None


async def test_team_match_and_master_key_exemption(clock: FakeClock):
    settings = make_settings(
        throttle={
            "policies": [policy("ml-only", "inflight", [{"above": -1, "rpm": 0}], match={"team": "ml"})],
        }
    )
    limiter = ThrottleLimiter(settings, clock=clock)
    assert await admitted(limiter, make_key("a", team="ml")) is None
    assert await admitted(limiter, make_key("b", team="web")) is not None
    assert await admitted(limiter, make_key("master", is_master=True)) is not None
