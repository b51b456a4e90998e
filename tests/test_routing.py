"""Router unit tests: strategies (distribution over many seeded picks), cooldown and
half-open recovery on a fake clock, a deployment's own rpm/tpm, timeouts, group knobs."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from llmgate import calls
from llmgate.config import Price, Timeouts
from llmgate.errors import (
    ContextWindowExceeded,
    ProviderDisabled,
    Throttled,
    UpstreamCallerError,
    UpstreamError,
    UpstreamRateLimited,
)
from llmgate.routing import CLOSED, HALF_OPEN, OPEN, Router, build_providers
from tests.harness import make_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_router(models: list[dict[str, Any]], seed: int = 7, **routing: Any) -> tuple[Router, FakeClock]:
    doc = {
        "providers": {
            "a": {"type": "mock"},
            "b": {"type": "mock"},
            "c": {"type": "mock"},
            "off": {"type": "openai", "api_key": "${LLMGATE_ROUTING_TEST_UNSET}"},
        },
        "models": models,
        "routing": {"cooldown_failures": 3, "cooldown_window_s": 10, "cooldown_s": 30, **routing},
    }
    settings = make_settings(doc)
    clock = FakeClock()
    router = Router(settings, build_providers(settings), clock=clock, sleep=clock.sleep, rng=random.Random(seed))
    return router, clock


def group_of(*entries: dict[str, Any], name: str = "m") -> list[dict[str, Any]]:
    return [{"name": name, "upstream": f"up-{e['provider']}", **e} for e in entries]


async def first_picks(router: Router, name: str, n: int) -> Counter[str]:
    group = router.group(name)
    counts: Counter[str] = Counter()
    for _ in range(n):
        attempt = await router.pick(group)
        counts[attempt.deployment.provider.name] += 1
    return counts


# -- strategies ---------------------------------------------------------------------------


async def test_weighted_follows_weights() -> None:
    router, _ = make_router(group_of({"provider": "a", "weight": 1}, {"provider": "b", "weight": 3}))
    counts = await first_picks(router, "m", 4000)
    assert counts["a"] + counts["b"] == 4000
    assert 0.22 < counts["a"] / 4000 < 0.28


async def test_weighted_zero_weight_is_only_a_backup() -> None:
    router, _ = make_router(group_of({"provider": "a", "weight": 0}, {"provider": "b", "weight": 1}))
    assert await first_picks(router, "m", 200) == Counter({"b": 200})
    order = router.candidates(router.group("m"))
    assert [d.provider.name for d in order] == ["b", "a"]


async def test_least_inflight_prefers_idle_and_spreads_ties() -> None:
    router, _ = make_router(
        group_of({"provider": "a", "strategy": "least-inflight"}, {"provider": "b"}, {"provider": "c"})
    )
    a, b, c = router.group("m").deployments
    a.inflight, b.inflight, c.inflight = 5, 1, 1
    counts = await first_picks(router, "m", 2000)
    assert counts["a"] == 0
    assert 0.45 < counts["b"] / 2000 < 0.55
    b.inflight = 0
    assert await first_picks(router, "m", 50) == Counter({"b": 50})


async def test_lowest_latency_tries_untried_first_then_fastest() -> None:
    router, _ = make_router(
        group_of({"provider": "a", "strategy": "lowest-latency"}, {"provider": "b"}), latency_ewma_alpha=0.5
    )
    group = router.group("m")
    a, b = group.deployments
    first = await router.pick(group)
    router.succeeded(first, 0.2 if first.deployment is a else 0.1)
    second = await router.pick(group)
    assert second.deployment is not first.deployment, "the untried deployment goes next"
    router.succeeded(second, 0.1 if second.deployment is b else 0.2)
    assert (a.latency, b.latency) == (0.2, 0.1)
    assert await first_picks(router, "m", 100) == Counter({"b": 100})
    # EWMA: b gets slow; with alpha 0.5 two samples of 0.5 lift it to 0.4 > a's 0.2.
    for _ in range(2):
        router.succeeded(await router.pick(group, tried=[a]), 0.5)
    assert b.latency == pytest.approx(0.4)
    assert (await router.pick(group)).deployment is a


async def test_priority_is_ordered_failover() -> None:
    router, clock = make_router(
        group_of(
            {"provider": "a", "order": 2, "strategy": "priority"},
            {"provider": "b", "order": 1},
            {"provider": "c", "order": 3},
        )
    )
    assert await first_picks(router, "m", 50) == Counter({"b": 50})
    group = router.group("m")
    assert [d.provider.name for d in router.candidates(group, tried=[group.deployments[1]])] == ["a", "c", "b"]
    b = group.deployments[1]
    for _ in range(3):
        router.failed(await router.pick(group), UpstreamError("boom"))
    assert b.breaker.status(clock.now) == OPEN
    assert await first_picks(router, "m", 20) == Counter({"a": 20})


async def test_lowest_cost_cheapest_first_unknown_last() -> None:
    router, _ = make_router(
        group_of(
            {"provider": "a", "strategy": "lowest-cost", "price": {"input": 1, "output": 4}},
            {"provider": "b"},
            {"provider": "c", "price": {"input": "0.5", "output": "2"}},
        )
    )
    assert await first_picks(router, "m", 50) == Counter({"c": 50})
    assert [d.provider.name for d in router.candidates(router.group("m"))] == ["c", "a", "b"]
    # A price book (the catalog) can fill in what config leaves out.
    router.use_prices(lambda d: d.model.price or Price(input=Decimal("0.1"), output=Decimal("0.1")))
    assert [d.provider.name for d in router.candidates(router.group("m"))] == ["b", "c", "a"]


async def test_retries_rotate_over_untried_deployments() -> None:
    router, _ = make_router(group_of({"provider": "a"}, {"provider": "b"}))
    group = router.group("m")
    for _ in range(50):
        first = (await router.pick(group)).deployment
        second = (await router.pick(group, tried=[first])).deployment
        assert second is not first
        third = (await router.pick(group, tried=[first, second])).deployment
        assert third in group.deployments


async def test_disabled_provider_only_when_nothing_else() -> None:
    router, _ = make_router(group_of({"provider": "off"}, {"provider": "a"}) + group_of({"provider": "off"}, name="x"))
    assert await first_picks(router, "m", 30) == Counter({"a": 30})
    assert (await router.pick(router.group("x"))).deployment.disabled


# -- cooldown -----------------------------------------------------------------------------


async def test_cooldown_opens_after_n_failures_within_window() -> None:
    router, clock = make_router(group_of({"provider": "a"}, {"provider": "b"}))
    group = router.group("m")
    a, b = group.deployments
    fail = router.failed
    fail(await router.pick(group, tried=[b]), UpstreamError("1"))
    clock.now += 11  # the first failure leaves the 10 s window
    fail(await router.pick(group, tried=[b]), UpstreamError("2"))
    fail(await router.pick(group, tried=[b]), UpstreamRateLimited("3"))
    assert a.breaker.status(clock.now) == CLOSED
    fail(await router.pick(group, tried=[b]), UpstreamError("4"))
    assert a.breaker.status(clock.now) == OPEN
    assert a.cooldowns == 1 and router.stats.cooldowns == {"a/up-a": 1}
    assert await first_picks(router, "m", 20) == Counter({"b": 20})


async def test_caller_errors_never_open_the_breaker() -> None:
    router, clock = make_router(group_of({"provider": "a"}))
    group = router.group("m")
    for exc in [UpstreamCallerError("bad", status=400), ContextWindowExceeded("long")] * 3 + [ProviderDisabled("x")]:
        router.failed(await router.pick(group), exc)
    dep = group.deployments[0]
    assert dep.breaker.status(clock.now) == CLOSED and dep.failures == 0


async def test_half_open_lets_one_probe_and_success_closes() -> None:
    router, clock = make_router(group_of({"provider": "a"}, {"provider": "b"}))
    group = router.group("m")
    a, b = group.deployments
    for _ in range(3):
        router.failed(await router.pick(group, tried=[b]), UpstreamError("x"))
    assert a.breaker.status(clock.now) == OPEN
    clock.now += 30
    assert a.breaker.status(clock.now) == HALF_OPEN
    probe = await router.pick(group, tried=[b])
    assert probe.deployment is a and probe.probe
    # While the probe is out, everything else goes to b.
    assert await first_picks(router, "m", 20) == Counter({"b": 20})
    router.succeeded(probe, 0.05)
    assert a.breaker.status(clock.now) == CLOSED
    assert not (await router.pick(group, tried=[b])).probe


async def test_failed_probe_reopens_and_cancelled_probe_frees_the_slot() -> None:
    router, clock = make_router(group_of({"provider": "a"}, {"provider": "b"}))
    group = router.group("m")
    a, b = group.deployments
    for _ in range(3):
        router.failed(await router.pick(group, tried=[b]), UpstreamError("x"))
    clock.now += 30
    probe = await router.pick(group, tried=[b])
    router.abandoned(probe)  # cancelled: no verdict, another probe may go
    probe = await router.pick(group, tried=[b])
    assert probe.deployment is a and probe.probe
    router.failed(probe, UpstreamError("still down"))
    assert a.breaker.status(clock.now) == OPEN and a.cooldowns == 2
    assert a.breaker.open_until == clock.now + 30


async def test_all_in_cooldown_tries_the_one_that_ends_first() -> None:
    router, clock = make_router(group_of({"provider": "a"}, {"provider": "b"}))
    group = router.group("m")
    a, b = group.deployments
    for other in (b, a):
        for _ in range(3):
            router.failed(await router.pick(group, tried=[other]), UpstreamError("x"))
        clock.now += 5
    assert a.breaker.status(clock.now) == OPEN and b.breaker.status(clock.now) == OPEN
    forced = await router.pick(group)
    assert forced.deployment is a and forced.probe
    router.succeeded(forced, 0.1)
    assert a.breaker.status(clock.now) == CLOSED and b.breaker.status(clock.now) == OPEN


async def test_mid_stream_failure_after_probe_success_counts_normally() -> None:
    router, clock = make_router(group_of({"provider": "a"}), cooldown_failures=2)
    group = router.group("m")
    dep = group.deployments[0]
    for _ in range(2):
        router.failed(await router.pick(group), UpstreamError("x"))
    clock.now += 30
    probe = await router.pick(group)
    router.succeeded(probe, 0.1)  # first byte arrived
    router.failed(probe, UpstreamError("reset mid-stream"))
    assert dep.breaker.status(clock.now) == CLOSED


# -- a deployment's own rpm / tpm ------------------------------------------------------------


async def test_deployment_at_its_rpm_is_skipped() -> None:
    router, _ = make_router(
        group_of({"provider": "a", "rpm": 2, "strategy": "priority"}, {"provider": "b", "order": 1})
    )
    assert await first_picks(router, "m", 5) == Counter({"a": 2, "b": 3})


async def test_all_at_rpm_waits_max_wait_then_429() -> None:
    router, clock = make_router(group_of({"provider": "a", "rpm": 1, "max_wait_ms": 300}))
    group = router.group("m")
    await router.pick(group)
    start = clock.now
    with pytest.raises(Throttled) as info:
        await router.pick(group)
    assert clock.now - start == pytest.approx(0.3)
    assert info.value.status == 429 and 59 <= info.value.retry_after <= 61
    assert info.value.headers["retry-after"] in {"60", "61"}
    assert router.stats.throttled == 1 and router.stats.capacity_waits == 1


async def test_capacity_returning_within_max_wait_is_used() -> None:
    router, clock = make_router(group_of({"provider": "a", "rpm": 1, "max_wait_ms": 2000}))
    group = router.group("m")
    await router.pick(group)
    clock.now += 59.5  # the first call leaves the minute window within the wait
    attempt = await router.pick(group)
    assert attempt.deployment.provider.name == "a"
    assert 0.5 <= sum(clock.slept) <= 2.0


async def test_no_max_wait_means_immediate_429() -> None:
    router, clock = make_router(group_of({"provider": "a", "rpm": 1}))
    group = router.group("m")
    await router.pick(group)
    with pytest.raises(Throttled):
        await router.pick(group)
    assert clock.slept == []


async def test_tpm_counts_tokens_and_refunds_on_settle() -> None:
    router, _ = make_router(group_of({"provider": "a", "tpm": 1000}))
    group = router.group("m")
    first = await router.pick(group, need_tokens=900)
    with pytest.raises(Throttled):
        await router.pick(group, need_tokens=200)
    router.settle_tokens(first, 100)  # the call used far fewer tokens than estimated
    second = await router.pick(group, need_tokens=200)
    assert second.deployment is first.deployment
    described = router.describe()[0]
    assert described["tpm"] == {"limit": 1000, "used": 300}


async def test_a_call_bigger_than_the_whole_tpm_goes_alone() -> None:
    router, _ = make_router(group_of({"provider": "a", "tpm": 100}))
    group = router.group("m")
    await router.pick(group, need_tokens=500)
    with pytest.raises(Throttled):
        await router.pick(group, need_tokens=1)


# -- configuration ----------------------------------------------------------------------------


def test_timeouts_merge_provider_then_model_fields_within_deadline() -> None:
    doc = {
        "providers": {
            "p": {"type": "mock", "timeouts": {"connect": 1, "first_byte": 7}, "timeout": 20},
            "q": {"type": "mock"},
        },
        "models": [
            {"name": "m", "provider": "p", "timeouts": {"first_byte": 2}},
            {"name": "n", "provider": "q"},
        ],
        "routing": {"deadline_s": 15},
    }
    settings = make_settings(doc)
    router = Router(settings, build_providers(settings))
    assert router.group("m").deployments[0].timeouts == Timeouts(connect=1, first_byte=2, total=15)
    assert router.group("n").deployments[0].timeouts == Timeouts(connect=5, first_byte=15, total=15)


def test_group_knobs_come_from_the_first_entry_that_sets_them() -> None:
    router, _ = make_router(
        [
            {"name": "m", "provider": "a"},
            {"name": "m", "provider": "b", "strategy": "priority", "max_wait_ms": 250, "fallbacks": ["x"]},
            {"name": "m", "provider": "c", "strategy": "lowest-cost", "context_window_fallbacks": ["x"]},
            {"name": "x", "provider": "a"},
        ]
    )
    group = router.group("m")
    assert (group.strategy, group.max_wait_s, group.fallbacks) == ("priority", 0.25, ("x",))
    assert group.context_window_fallbacks == ("x",)
    assert router.group("x").strategy == "weighted"
    assert set(router.groups) == {"m", "x"}


def test_describe_shows_state_without_secrets() -> None:
    router, clock = make_router(group_of({"provider": "a", "rpm": 10, "weight": 2}))
    dep = router.group("m").deployments[0]
    dep.breaker._open(clock.now, 30)
    (row,) = router.describe()
    assert row["deployment"] == "a/up-a" and row["model"] == "m" and row["weight"] == 2
    assert row["cooldown"]["state"] == "open" and row["cooldown"]["remaining_s"] == 30
    assert row["rpm"] == {"limit": 10, "used": 0} and row["inflight"] == 0


def test_backoff_full_jitter_honours_retry_after() -> None:
    random.seed(3)
    delays = [calls.backoff_delay(0.1, 5.0, 3, None) for _ in range(500)]
    assert all(0 <= d <= 0.4 for d in delays) and max(delays) > 0.3 and min(delays) < 0.1
    assert all(0 <= calls.backoff_delay(0.1, 0.5, 10, None) <= 0.5 for _ in range(100))
    assert all(calls.backoff_delay(0.1, 5.0, 1, 2.5) >= 2.5 for _ in range(100))


async def test_metrics_hooks_see_upstream_errors_and_cooldowns() -> None:
    router, _ = make_router(group_of({"provider": "a"}), cooldown_failures=2)
    errors: list[tuple[str, str | int | None]] = []
    cooldowns: list[str] = []
    router.on_upstream_error = lambda provider, code: errors.append((provider, code))
    router.on_cooldown = cooldowns.append
    group = router.group("m")
    router.failed(await router.pick(group), UpstreamCallerError("bad", status=400))
    router.failed(await router.pick(group), UpstreamRateLimited("slow"))
    router.failed(await router.pick(group), UpstreamError("boom"))
    assert errors == [("a", "rate_limit_exceeded"), ("a", "upstream_error")]
    assert cooldowns == ["a/up-a"]
