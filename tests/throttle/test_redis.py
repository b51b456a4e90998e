"""The Redis backend against a real Redis: the same limits, one round trip, several processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgate.errors import QuotaExceeded, Throttled
from llmgate.throttle import ThrottleLimiter, build_limiter
from llmgate.throttle.redis import RedisBackend, build_client

from .conftest import delete_keys, finish, hash_of, make_ctx, make_key, make_settings

ROOT = Path(__file__).resolve().parents[2]


def redis_limiter(redis_url: str, prefix: str, **sections: object) -> ThrottleLimiter:
    gateway = {"redis_url": redis_url}
    return build_limiter(make_settings(gateway=gateway, **sections), redis_prefix=prefix)


class CountingClient:
    """Counts the commands sent through a real client (each is one round trip here)."""

    def __init__(self, client) -> None:
        self.client = client
        self.commands: list[str] = []
        original = client.send

        def counted(payload: bytes):
            self.commands.append(payload.split(b"\r\n")[2].decode())  # *N, $len, NAME
            return original(payload)

        client.send = counted


async def test_twenty_concurrent_calls_against_rpm_5_admit_exactly_5(redis_url, redis_prefix):
    limiter = redis_limiter(redis_url, redis_prefix, limits={"rpm": 5})
    key = make_key("k1")
    outcomes = await asyncio.gather(*(limiter.admit(make_ctx(key)) for _ in range(20)), return_exceptions=True)
    assert outcomes.count(None) == 5
    refused = [o for o in outcomes if isinstance(o, Throttled)]
    assert len(refused) == 15
    assert refused[0].message.startswith("Rate limit reached for key 'k1' (rpm 5). Retry after ")
    assert 59 <= int(refused[0].headers["retry-after"]) <= 61
    assert refused[0].headers["x-ratelimit-remaining-requests"] == "0"
    await limiter.close()


async def test_exactly_one_round_trip_per_admission_and_per_settlement(redis_url, redis_prefix):
    client = build_client(redis_url)
    counter = CountingClient(client)
    settings = make_settings(
        limits={"rpm": 100, "tpm": 100_000, "max_concurrency": 10, "budget_usd": "5"},
        throttle={
            "global": {"rpm": 1000},
            "teams": {"ml": {"rpm": 1000}},
            "policies": [
                {"name": "tiers", "signal": "tokens_today", "steps": [{"above": 0}, {"above": 10**9, "rpm": 1}]},
                {"name": "load", "signal": "inflight", "steps": [{"above": 0}, {"above": 10**6, "rpm": 1}]},
            ],
        },
    )
    limiter = ThrottleLimiter(settings, RedisBackend(client, prefix=redis_prefix))
    await limiter.start()
    counter.commands.clear()
    key = make_key("k1", team="ml")
    for _ in range(5):
        ctx = make_ctx(key, max_tokens=20)
        await limiter.admit(ctx)
        assert counter.commands == ["EVALSHA"]
        counter.commands.clear()
        await limiter.settle(finish(ctx, input_tokens=5, output_tokens=7, cost_nusd=10))
        assert counter.commands == ["EVALSHA"]
        counter.commands.clear()
    await client.aclose()


async def test_token_reservations_settle_in_their_own_bucket(redis_url, redis_prefix):
    limiter = redis_limiter(redis_url, redis_prefix, limits={"tpm": 100})
    key = make_key()
    first = make_ctx(key, max_tokens=50)
    first.prompt_tokens = 10
    await limiter.admit(first)
    second = make_ctx(key, max_tokens=50)
    second.prompt_tokens = 10
    with pytest.raises(Throttled, match=r"tpm 100"):
        await limiter.admit(second)
    await limiter.settle(finish(first, input_tokens=10, output_tokens=10))
    await limiter.admit(second)
    assert second.headers["x-ratelimit-remaining-tokens"] == "20"
    client = limiter.backend.primary.client
    buckets = await hash_of(client, f"{redis_prefix}w:k:k1|tpm")
    # Bucket fields only: the negative ids are the script's bookkeeping (sum, frontier, newest).
    assert sum(int(v) for k, v in buckets.items() if not k.startswith(b"-")) == 80
    assert str(first.admission.buckets[0]).encode() in buckets
    await limiter.settle(second)  # no usage: the whole reservation goes back
    buckets = await hash_of(client, f"{redis_prefix}w:k:k1|tpm")
    assert sum(int(v) for k, v in buckets.items() if not k.startswith(b"-")) == 20
    await limiter.close()


async def test_concurrency_and_budgets_hold_under_concurrency(redis_url, redis_prefix):
    settings = make_settings(
        gateway={"redis_url": redis_url}, limits={"max_concurrency": 4, "budget_usd": "1", "budget_period": "week"}
    )
    limiter = build_limiter(settings, redis_prefix=redis_prefix, estimate_cost_nusd=lambda ctx: 300_000_000)
    key = make_key()
    ctxs = [make_ctx(key) for _ in range(50)]
    outcomes = await asyncio.gather(*(limiter.admit(c) for c in ctxs), return_exceptions=True)
    admitted = [c for c, o in zip(ctxs, outcomes, strict=True) if o is None]
    assert len(admitted) == 3  # 3 x 0.30 reserved; a fourth could pass 1 USD
    assert all(isinstance(o, QuotaExceeded) for o in outcomes if o is not None)
    await asyncio.gather(*(limiter.settle(finish(c, cost_nusd=200_000_000)) for c in admitted))
    week = admitted[0].admission.periods.week
    spent = await limiter.backend.primary.client.execute("GET", f"{redis_prefix}s:k:k1|{week}")
    assert int(spent) == 600_000_000
    more = [make_ctx(key) for _ in range(10)]
    outcomes = await asyncio.gather(*(limiter.admit(c) for c in more), return_exceptions=True)
    assert outcomes.count(None) == 1  # 0.60 + 0.30 fits, 0.60 + 0.60 does not
    held = [c for c, o in zip(more, outcomes, strict=True) if o is None]
    for c in held:
        await limiter.settle(c)
    conc = make_settings(gateway={"redis_url": redis_url}, limits={"max_concurrency": 4})
    limiter = build_limiter(conc, redis_prefix=redis_prefix + "c:")
    ctxs = [make_ctx(key) for _ in range(20)]
    outcomes = await asyncio.gather(*(limiter.admit(c) for c in ctxs), return_exceptions=True)
    assert outcomes.count(None) == 4
    assert "max_concurrency 4" in next(o for o in outcomes if o is not None).message
    first = next(c for c, o in zip(ctxs, outcomes, strict=True) if o is None)
    await limiter.settle(first)
    await limiter.admit(make_ctx(key))
    await limiter.close()


async def test_reconcile_and_key_signals_come_from_redis(redis_url, redis_prefix):
    settings = make_settings(
        limits={"budget_usd": "1", "budget_period": "month"},
        throttle={
            "policies": [{"name": "tiers", "signal": "tokens_today", "steps": [{"above": 0}, {"above": 100, "rpm": 0}]}]
        },
    )
    limiter = ThrottleLimiter(settings, RedisBackend(build_client(redis_url), prefix=redis_prefix))
    await limiter.reconcile({"spent": {"month": 1_000_000_000}}, {}, {"busy": 150})
    with pytest.raises(QuotaExceeded):
        await limiter.admit(make_ctx(make_key("spent")))
    busy = make_key("busy")
    ctx = make_ctx(busy)
    await limiter.admit(ctx)  # the first call of a key reads its signals (one call stale at most)
    with pytest.raises(Throttled, match="policy tiers/1"):
        await limiter.admit(make_ctx(busy))
    await limiter.close()


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from llmgate.config import parse_settings
    from llmgate.throttle import build_limiter
    from llmgate.types import KeyInfo, RequestContext

    url, prefix = sys.argv[1], sys.argv[2]

    async def main():
        settings = parse_settings({"gateway": {"redis_url": url}, "limits": {"rpm": 37}}, "worker")
        limiter = build_limiter(settings, redis_prefix=prefix)
        key = KeyInfo(id="shared", name="shared")
        await limiter.start()
        print("ready", flush=True)
        sys.stdin.readline()

        async def one(i):
            await asyncio.sleep(i * 0.002)  # a stream of calls, interleaving with the other process
            ctx = RequestContext(request_id=f"{i}", surface="chat", token=None, body={}, model="m", key=key)
            try:
                await limiter.admit(ctx)
                return 1
            except Exception:
                return 0

        print(sum(await asyncio.gather(*(one(i) for i in range(50)))), flush=True)
        await limiter.close()

    asyncio.run(main())
    """
)


def test_two_processes_sharing_redis_admit_exactly_the_limit_combined(redis_url, redis_prefix):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, redis_prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
    for worker in workers:  # both go at once
        worker.stdin.write("go\n")
        worker.stdin.flush()
    counts = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        counts.append(int(out.strip()))
    assert sum(counts) == 37
    assert all(c > 0 for c in counts), counts  # both really competed


async def test_waiting_with_redis_keeps_arrival_order(redis_url, redis_prefix):
    limiter = redis_limiter(redis_url, redis_prefix, limits={"rps": 2, "max_wait_ms": 3000})
    key = make_key()
    order: list[int] = []

    async def call(i: int) -> None:
        await limiter.admit(make_ctx(key))
        order.append(i)

    start = time.monotonic()
    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]
    assert 1.9 < time.monotonic() - start < 3.0
    await limiter.close()


async def test_the_inflight_signal_is_gateway_wide_across_processes(redis_url, redis_prefix):
    settings = make_settings(
        throttle={
            "policies": [
                {
                    "name": "shed",
                    "signal": "inflight",
                    "match": {"priority": "batch"},
                    "steps": [{"above": 0}, {"above": 3, "rpm": 0}],
                }
            ]
        }
    )
    here = ThrottleLimiter(settings, RedisBackend(build_client(redis_url), prefix=redis_prefix))
    there = ThrottleLimiter(settings, RedisBackend(build_client(redis_url), prefix=redis_prefix))
    held = [make_ctx(make_key("web")) for _ in range(3)]
    for ctx in held:
        await there.admit(ctx)
    batch = make_key("batch", priority="batch")
    first = make_ctx(batch)
    await here.admit(first)  # decided on what this process knew (0); Redis now says 4 in flight
    with pytest.raises(Throttled, match="policy shed/1"):
        await here.admit(make_ctx(batch))
    for ctx in [*held, first]:
        await there.settle(ctx) if ctx in held else await here.settle(ctx)
    await here.admit(make_ctx(batch))
    for limiter in (here, there):
        await limiter.close()


async def test_reused_request_ids_never_share_a_concurrency_slot(redis_url, redis_prefix):
    limiter = redis_limiter(redis_url, redis_prefix, limits={"max_concurrency": 2})
    key = make_key()
    ctxs = [make_ctx(key) for _ in range(3)]
    for ctx in ctxs:
        ctx.request_id = "same-id-from-the-caller"
    outcomes = await asyncio.gather(*(limiter.admit(c) for c in ctxs), return_exceptions=True)
    assert outcomes.count(None) == 2
    await limiter.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    costs=st.lists(st.integers(1, 60), min_size=1, max_size=40),
    limit=st.integers(0, 300),
)
async def test_a_concurrent_weighted_burst_never_passes_the_token_limit(redis_url, costs, limit):
    prefix = f"llmgate-test-{uuid.uuid4().hex[:10]}:"
    limiter = redis_limiter(redis_url, prefix, limits={"tpm": limit})
    ctxs = []
    for cost in costs:
        ctx = make_ctx(make_key(), max_tokens=cost)
        ctx.prompt_tokens = 1
        ctxs.append(ctx)
    try:
        outcomes = await asyncio.gather(*(limiter.admit(c) for c in ctxs), return_exceptions=True)
        admitted = sum(c.reserved_tokens for c, o in zip(ctxs, outcomes, strict=True) if o is None)
        assert admitted <= limit
        for ctx, outcome in zip(ctxs, outcomes, strict=True):
            if outcome is not None:
                assert isinstance(outcome, Throttled)
                assert admitted + ctx.reserved_tokens > limit  # refused only when it could not fit
        client = limiter.backend.primary.client
        stored = await hash_of(client, f"{prefix}w:k:k1|tpm")
        assert sum(int(v) for k, v in stored.items() if not k.startswith(b"-")) == admitted
    finally:
        await delete_keys(limiter.backend.primary.client, f"{prefix}*")
        await limiter.close()
