"""ThrottleLimiter over the in-memory backend: every limit, tokens, budgets, waiting, headers."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgate.errors import QuotaExceeded, Throttled
from llmgate.throttle import ThrottleLimiter, build_limiter
from llmgate.throttle.estimate import build_cost_estimator
from llmgate.types import RequestContext, Usage

from .conftest import FakeClock, finish, make_ctx, make_key, make_settings


async def try_admit(limiter: ThrottleLimiter, ctx: RequestContext) -> bool:
    try:
        await limiter.admit(ctx)
    except (Throttled, QuotaExceeded):
        return False
    return True


async def test_twenty_concurrent_calls_against_rpm_5_admit_exactly_5():
    limiter = build_limiter(make_settings(limits={"rpm": 5}))
    key = make_key("k1")
    outcomes = await asyncio.gather(*(limiter.admit(make_ctx(key)) for _ in range(20)), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, Throttled)]
    assert outcomes.count(None) == 5
    assert len(refused) == 15
    error = refused[0]
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert error.message.startswith("Rate limit reached for key 'k1' (rpm 5). Retry after ")
    assert 59 <= int(error.headers["retry-after"]) <= 61
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-requests"] == "5"


async def test_admitted_calls_carry_the_rate_limit_headers(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"rpm": 3, "tpm": 1000}), clock=clock)
    ctx = make_ctx(make_key(), max_tokens=50)
    ctx.prompt_tokens = 10
    await limiter.admit(ctx)
    assert ctx.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1m1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "940",
        "x-ratelimit-reset-tokens": "1m1s",
    }


async def test_rps_refuses_within_the_second_and_admits_after_it(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"rps": 2}), clock=clock)
    key = make_key()
    assert [await try_admit(limiter, make_ctx(key)) for _ in range(3)] == [True, True, False]
    clock.advance(0.5)
    assert not await try_admit(limiter, make_ctx(key))
    clock.advance(0.6)  # one window + one sub-bucket (1/60 s) after the first two
    assert await try_admit(limiter, make_ctx(key))


async def test_tokens_reserve_prompt_plus_max_tokens_and_settle_to_actual_usage(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"tpm": 100}), clock=clock)
    key = make_key()
    first = make_ctx(key, max_tokens=50)
    first.prompt_tokens = 10
    await limiter.admit(first)
    assert first.reserved_tokens == 60
    second = make_ctx(key, max_tokens=50)
    second.prompt_tokens = 10
    with pytest.raises(Throttled, match=r"key 'k1' \(tpm 100\)"):
        await limiter.admit(second)
    await limiter.settle(finish(first, input_tokens=10, output_tokens=10))  # 40 refunded
    await limiter.admit(second)
    assert second.headers["x-ratelimit-remaining-tokens"] == "20"
    await limiter.settle(finish(second, input_tokens=10, output_tokens=45))  # 5 refunded
    third = make_ctx(key, max_tokens=5)
    third.prompt_tokens = 20
    await limiter.admit(third)  # 20 + 55 + 25 = 100: exactly at the limit
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_prompt_tokens_are_counted_with_tiktoken_when_a_token_limit_applies(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"tpm": 10_000, "default_max_tokens": 100}), clock=clock)
    ctx = make_ctx(make_key(), max_tokens=None, text="hello there, how are you?")
    await limiter.admit(ctx)
    assert ctx.prompt_tokens > 5
    assert ctx.reserved_tokens == ctx.prompt_tokens + 100
    embed = make_ctx(make_key(), surface="embeddings", text="one two three four")
    await limiter.admit(embed)
    assert embed.reserved_tokens == embed.prompt_tokens == 4


async def test_no_token_counting_when_no_token_limit_or_budget_applies(clock: FakeClock, monkeypatch):
    def refuse(*_args: object) -> int:
        raise AssertionError("tokens counted on the hot path")

    monkeypatch.setattr("llmgate.tokens.count_request", refuse)
    limiter = ThrottleLimiter(make_settings(limits={"rpm": 5, "max_concurrency": 3}), clock=clock)
    ctx = make_ctx(make_key())
    await limiter.admit(ctx)
    assert (ctx.prompt_tokens, ctx.reserved_tokens) == (0, 0)


async def test_a_failed_call_without_usage_refunds_the_whole_reservation(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"tpm": 100}), clock=clock)
    ctx = make_ctx(make_key(), max_tokens=90)
    ctx.prompt_tokens = 10
    await limiter.admit(ctx)
    ctx.status = 502
    await limiter.settle(ctx)
    again = make_ctx(make_key(), max_tokens=90)
    again.prompt_tokens = 10
    await limiter.admit(again)


async def test_cached_input_counts_unless_configured_not_to(clock: FakeClock):
    for count_cached, remaining in ((True, "0"), (False, "40")):
        limiter = ThrottleLimiter(make_settings(limits={"tpm": 100, "count_cached_input": count_cached}), clock=clock)
        ctx = make_ctx(make_key(), max_tokens=40)
        ctx.prompt_tokens = 60
        await limiter.admit(ctx)
        ctx.usage = Usage(input_tokens=60, cached_input_tokens=40, output_tokens=40)
        await limiter.settle(ctx)
        probe = make_ctx(make_key(), max_tokens=1)
        probe.prompt_tokens = 1
        admitted = await try_admit(limiter, probe)
        assert admitted == (remaining != "0")


async def test_a_request_larger_than_the_token_limit_is_refused_outright(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"tpm": 100, "max_wait_ms": 60_000}), clock=clock)
    ctx = make_ctx(make_key(), max_tokens=200)
    ctx.prompt_tokens = 1
    with pytest.raises(Throttled, match=r"Request too large for key 'k1' \(tpm 100\): it reserves 201 tokens"):
        await limiter.admit(ctx)


async def test_tpd_is_a_sliding_day(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"tpd": 100}), clock=clock)
    key = make_key()

    def ctx_of(tokens: int) -> RequestContext:
        ctx = make_ctx(key, max_tokens=tokens)
        ctx.prompt_tokens = 1
        return ctx

    assert await try_admit(limiter, ctx_of(59))
    clock.advance(12 * 3600)
    assert await try_admit(limiter, ctx_of(39))
    assert not await try_admit(limiter, ctx_of(1))
    clock.advance(12 * 3600 + 1441)  # the first reservation has left (one bucket = 1440 s)
    assert await try_admit(limiter, ctx_of(59))


async def test_max_concurrency_releases_at_settle(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"max_concurrency": 2}), clock=clock)
    key = make_key()
    first, second, third = make_ctx(key), make_ctx(key), make_ctx(key)
    await limiter.admit(first)
    await limiter.admit(second)
    with pytest.raises(Throttled, match=r"Concurrency limit reached for key 'k1' \(max_concurrency 2\)"):
        await limiter.admit(third)
    await limiter.settle(first)
    await limiter.settle(first)  # settling twice releases once
    await limiter.admit(third)
    assert not await try_admit(limiter, make_ctx(key))


async def test_team_global_model_and_key_model_scopes_are_shared_as_they_should_be(clock: FakeClock):
    settings = make_settings(
        throttle={"teams": {"ml": {"rpm": 3}}, "global": {"rpm": 5}, "models": {"small": {"rpm": 1}}}
    )
    limiter = ThrottleLimiter(settings, clock=clock)
    a, b, c = make_key("a", team="ml"), make_key("b", team="ml"), make_key("c")
    assert [await try_admit(limiter, make_ctx(k)) for k in (a, b, a, b)] == [True, True, True, False]
    with pytest.raises(Throttled, match="team 'ml' \\(rpm 3\\)"):
        await limiter.admit(make_ctx(b))
    assert [await try_admit(limiter, make_ctx(c)) for _ in range(3)] == [True, True, False]
    with pytest.raises(Throttled, match="the gateway \\(rpm 5\\)"):
        await limiter.admit(make_ctx(c))
    clock.advance(61)
    assert await try_admit(limiter, make_ctx(c, "small"))
    with pytest.raises(Throttled, match="model 'small' \\(rpm 1\\)"):
        await limiter.admit(make_ctx(a, "small"))
    per_model = make_key("d", metadata={"model_limits": {"big": {"rpm": 1}}})
    assert await try_admit(limiter, make_ctx(per_model, "big"))
    with pytest.raises(Throttled, match="key 'd' on model 'big' \\(rpm 1\\)"):
        await limiter.admit(make_ctx(per_model, "big"))
    assert await try_admit(limiter, make_ctx(per_model, "other"))


async def test_master_key_ignores_key_limits_but_counts_toward_global(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"rpm": 1}, throttle={"global": {"rpm": 3}}), clock=clock)
    master = make_key("master", is_master=True)
    assert [await try_admit(limiter, make_ctx(master)) for _ in range(2)] == [True, True]
    assert await try_admit(limiter, make_ctx(make_key("k1")))
    assert not await try_admit(limiter, make_ctx(master))


# -- budgets -------------------------------------------------------------------------------


async def test_fifty_concurrent_first_requests_cannot_spend_past_a_budget(clock: FakeClock):
    limiter = ThrottleLimiter(
        make_settings(limits={"budget_usd": "1", "budget_period": "day"}),
        clock=clock,
        estimate_cost_nusd=lambda ctx: 300_000_000,  # 0.30 USD worst case
    )
    key = make_key()
    spent = 0
    for _round in range(3):
        ctxs = [make_ctx(key) for _ in range(50)]
        outcomes = await asyncio.gather(*(limiter.admit(c) for c in ctxs), return_exceptions=True)
        admitted = [c for c, o in zip(ctxs, outcomes, strict=True) if o is None]
        assert all(isinstance(o, QuotaExceeded) for o in outcomes if o is not None)
        await asyncio.gather(*(limiter.settle(finish(c, cost_nusd=250_000_000)) for c in admitted))
        spent += 250_000_000 * len(admitted)
        assert spent <= 1_000_000_000
    # Three worst cases (0.90) fit at once; after they settle at 0.75 a fourth worst case would not.
    assert spent == 750_000_000
    with pytest.raises(QuotaExceeded) as info:
        await limiter.admit(make_ctx(key))
    assert info.value.code == "insufficient_quota" and info.value.status == 429
    assert info.value.message == (
        "Budget exceeded for key 'k1': 0.750000000 of 1.000000000 USD spent this day, "
        "and this request may cost up to 0.300000000 USD."
    )


async def test_a_day_budget_rolls_over_at_utc_midnight_and_a_total_one_never(clock: FakeClock):
    clock.now = 1_790_035_200.0 - 10  # ten seconds before a UTC midnight
    limiter = ThrottleLimiter(
        make_settings(limits={"budget_usd": "0.000001", "budget_period": "day"}, throttle={"global": {}}),
        clock=clock,
    )
    key = make_key()
    first = make_ctx(key)
    await limiter.admit(first)
    await limiter.settle(finish(first, cost_nusd=1000))
    with pytest.raises(QuotaExceeded):
        await limiter.admit(make_ctx(key))
    clock.advance(11)
    await limiter.admit(make_ctx(key))
    total = ThrottleLimiter(make_settings(limits={"budget_usd": "0.000001", "budget_period": "total"}), clock=clock)
    ctx = make_ctx(key)
    await total.admit(ctx)
    await total.settle(finish(ctx, cost_nusd=1000))
    clock.advance(40 * 86400)
    with pytest.raises(QuotaExceeded, match="in total"):
        await total.admit(make_ctx(key))


async def test_reconcile_raises_spend_and_tokens_today_from_the_store(clock: FakeClock):
    limiter = ThrottleLimiter(
        make_settings(limits={"budget_usd": "2", "budget_period": "month"}, throttle={"teams": {"ml": {}}}),
        clock=clock,
    )
    await limiter.reconcile({"k1": {"month": 2_000_000_000, "day": 5}}, {"ml": {"month": 7}}, {"k1": 1234})
    with pytest.raises(QuotaExceeded):
        await limiter.admit(make_ctx(make_key("k1")))
    await limiter.admit(make_ctx(make_key("k2")))
    starts = limiter.period_starts()
    assert starts["day"].timestamp() <= clock.now < starts["day"].timestamp() + 86400
    assert starts["week"].weekday() == 0


def test_the_default_estimate_is_the_worst_price_in_the_group_and_its_fallbacks():
    settings = make_settings(
        providers={"p": {"type": "mock"}},
        models=[
            {"name": "m", "provider": "p", "price": {"input": 1, "output": 2}, "fallbacks": ["n"]},
            {"name": "m", "provider": "p", "price": {"input": 3, "output": 1}},
            {"name": "n", "provider": "p", "price": {"input": 0.5, "output": 10}},
        ],
    )
    estimate = build_cost_estimator(settings)
    ctx = make_ctx(make_key(), "m")
    ctx.prompt_tokens, ctx.reserved_tokens = 1000, 1500
    # 1000 x 3 USD/M + 500 x 10 USD/M = 0.008 USD
    assert estimate(ctx) == 8_000_000


# -- waiting (max_wait_ms) ------------------------------------------------------------------


async def test_over_limit_requests_wait_in_arrival_order():
    limiter = build_limiter(make_settings(limits={"rps": 2, "max_wait_ms": 3000}))
    key = make_key()
    order: list[int] = []

    async def call(i: int) -> float:
        await limiter.admit(make_ctx(key))
        order.append(i)
        return time.monotonic()

    start = time.monotonic()
    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0.01)
    times = await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert times[1] - start < 0.4
    assert 0.9 < times[3] - start < 1.9
    assert 1.9 < times[5] - start < 2.9
    assert limiter.stats["queued"] == 4


async def test_a_wait_longer_than_max_wait_ms_gets_the_429_at_once():
    limiter = build_limiter(make_settings(limits={"rps": 1, "max_wait_ms": 300}))
    key = make_key()
    await limiter.admit(make_ctx(key))
    start = time.monotonic()
    with pytest.raises(Throttled, match="rps 1"):
        await limiter.admit(make_ctx(key))
    assert time.monotonic() - start < 0.25


async def test_concurrency_waiters_are_let_in_as_slots_are_released():
    limiter = build_limiter(make_settings(limits={"max_concurrency": 1, "max_wait_ms": 2000}))
    key = make_key()
    holder = make_ctx(key)
    await limiter.admit(holder)
    order: list[str] = []

    async def waiter(name: str) -> None:
        ctx = make_ctx(key)
        await limiter.admit(ctx)
        order.append(name)
        await asyncio.sleep(0.05)
        await limiter.settle(ctx)

    first = asyncio.create_task(waiter("first"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0.1)
    assert order == []
    started = time.monotonic()
    await limiter.settle(holder)
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert time.monotonic() - started < 1.0


async def test_newcomers_queue_behind_waiters_even_when_capacity_appears():
    limiter = build_limiter(make_settings(limits={"max_concurrency": 1, "max_wait_ms": 2000}))
    key = make_key()
    holder = make_ctx(key)
    await limiter.admit(holder)
    order: list[str] = []

    async def call(name: str) -> None:
        ctx = make_ctx(key)
        await limiter.admit(ctx)
        order.append(name)
        await limiter.settle(ctx)

    queued = asyncio.create_task(call("queued"))
    await asyncio.sleep(0.02)
    await limiter.settle(holder)  # a slot frees; the newcomer below must not take it first
    newcomer = asyncio.create_task(call("newcomer"))
    await asyncio.gather(queued, newcomer)
    assert order == ["queued", "newcomer"]


async def test_waiters_out_of_time_get_a_429():
    limiter = build_limiter(make_settings(limits={"max_concurrency": 1, "max_wait_ms": 200}))
    key = make_key()
    await limiter.admit(make_ctx(key))
    start = time.monotonic()
    outcomes = await asyncio.gather(*(limiter.admit(make_ctx(key)) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, Throttled) for o in outcomes)
    assert 0.15 < time.monotonic() - start < 1.0
    assert not limiter._lines


# -- the guarantee through the limiter, with tokens and settlement ------------------------------

schedules = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),  # key (both in team "t")
        st.integers(0, 4000),  # ms since the previous event
        st.integers(1, 40),  # max_tokens
        st.integers(0, 100),  # share of the reservation actually used, percent
        st.integers(0, 3),  # settle after this many later arrivals
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=120, deadline=None)
@given(schedule=schedules, rpm=st.integers(0, 8), team_tpm=st.integers(0, 150))
async def test_no_minute_admits_more_than_the_limits_with_tokens_and_settlement(schedule, rpm, team_tpm):
    clock = FakeClock()
    limiter = ThrottleLimiter(
        make_settings(limits={"rpm": rpm}, throttle={"teams": {"t": {"tpm": team_tpm}}}), clock=clock
    )
    keys = {name: make_key(name, team="t") for name in ("a", "b")}
    admitted: list[tuple[float, str, RequestContext]] = []
    pending: list[tuple[int, RequestContext, int]] = []
    for n, (name, gap, max_tokens, percent, delay) in enumerate(schedule):
        clock.advance(gap / 1000)
        for due, ctx, used in [p for p in pending if p[0] <= n]:
            pending.remove((due, ctx, used))
            await limiter.settle(finish(ctx, input_tokens=2, output_tokens=used - 2))
        ctx = make_ctx(keys[name], max_tokens=max_tokens)
        ctx.prompt_tokens = 2
        if await try_admit(limiter, ctx):
            admitted.append((clock.now, name, ctx))
            used = 2 + (max_tokens * percent) // 100
            pending.append((n + delay, ctx, used))

    def weight(ctx: RequestContext) -> int:
        return ctx.usage.total_tokens if ctx.usage is not None else ctx.reserved_tokens

    for at, name, _ in admitted:
        inside = [(n, c) for t, n, c in admitted if at - 60 <= t <= at]
        assert sum(1 for n, _ in inside if n == name) <= rpm
        assert sum(weight(c) for _, c in inside) <= team_tpm


async def test_a_refusal_carries_the_headers_on_the_error_only(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"rpm": 1}), clock=clock)
    await limiter.admit(make_ctx(make_key()))
    refused = make_ctx(make_key())
    with pytest.raises(Throttled) as info:
        await limiter.admit(refused)
    assert refused.headers == {}  # surfaces send error.headers + ctx.headers: nothing twice
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.headers["retry-after"] == "61"


async def test_team_records_from_the_database_replace_the_config_team(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(throttle={"teams": {"ml": {"rpm": 1}}}), clock=clock)
    key = make_key("a", team="ml")
    assert await try_admit(limiter, make_ctx(key))
    assert not await try_admit(limiter, make_ctx(key))
    limiter.set_team_limits("ml", {"name": "ml", "description": "x", "rpm": 3, "tpm": None, "budget_period": None})
    assert [await try_admit(limiter, make_ctx(key)) for _ in range(3)] == [True, True, False]
    limiter.set_team_limits("ml", None)  # back to config: rpm 1, already spent
    with pytest.raises(Throttled, match=r"team 'ml' \(rpm 1\)"):
        await limiter.admit(make_ctx(key))
    limiter.set_team_limits("web", {"budget_usd": "0"})
    with pytest.raises(QuotaExceeded, match="team 'web'"):
        await limiter.admit(make_ctx(make_key("b", team="web")))


async def test_reconcile_from_usage_queries_each_period_since_its_start(clock: FakeClock):
    limiter = ThrottleLimiter(make_settings(limits={"budget_usd": "1", "budget_period": "week"}), clock=clock)
    asked: list[object] = []

    def spend_by_key(since):
        asked.append(since)
        return {"k1": 1_000_000_000} if since >= limiter.period_starts()["week"] else {"k1": 5}

    await limiter.reconcile_from_usage(spend_by_key, lambda since: {}, lambda since: {"k1": 10})
    assert sorted(asked) == sorted(limiter.period_starts().values())
    with pytest.raises(QuotaExceeded, match=r"1\.000000000 of 1\.000000000 USD spent this week"):
        await limiter.admit(make_ctx(make_key("k1")))
