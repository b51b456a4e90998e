"""Redis unavailable: on_store_error open (local limits) or closed (503), logged, counted, recovered."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llmgate.errors import Throttled
from llmgate.throttle import LimiterStoreUnavailable, ThrottleLimiter, build_limiter
from llmgate.throttle.redis import RedisBackend, build_client

from .conftest import finish, make_ctx, make_key, make_settings


def limiter_at(url: str, mode: str, **limits: object) -> ThrottleLimiter:
    settings = make_settings(gateway={"redis_url": url}, limits={"on_store_error": mode, **limits})
    return build_limiter(settings, probe_interval_s=0.05)


async def test_open_falls_back_to_local_limits_when_redis_is_unreachable(caplog):
    limiter = limiter_at("redis://127.0.0.1:1/0", "open", rpm=3)
    key = make_key()
    with caplog.at_level(logging.WARNING, logger="llmgate.throttle"):
        outcomes = [await limiter.admit(make_ctx(key)) for _ in range(3)]
        with pytest.raises(Throttled, match=r"rpm 3"):
            await limiter.admit(make_ctx(key))
    assert outcomes == [None, None, None]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "falling back to local in-memory limits" in warnings[0]
    assert limiter.stats["store_outages"] == 1
    assert limiter.stats["store_errors"] >= 1
    assert limiter.stats["store_fallback_admissions"] == 4


async def test_closed_refuses_with_503_when_redis_is_unreachable():
    limiter = limiter_at("redis://127.0.0.1:1/0", "closed", rpm=3)
    assert not await limiter.ping()
    with pytest.raises(LimiterStoreUnavailable) as info:
        await limiter.admit(make_ctx(make_key()))
    assert info.value.status == 503
    assert info.value.code == "limiter_unavailable"
    assert limiter.stats["store_outages"] == 1 and limiter.stats["store_refusals"] == 1


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_stopped_mid_test_then_restarted(throwaway_redis, mode, caplog):
    limiter = limiter_at(throwaway_redis.url, mode, rpm=100)
    assert await limiter.ping()
    key = make_key()
    ctx = make_ctx(key)
    await limiter.admit(ctx)
    assert ctx.admission.store == "primary"
    throwaway_redis.stop()
    await limiter.settle(finish(ctx))  # lost with the server: counted, not raised
    during = make_ctx(key)
    with caplog.at_level(logging.WARNING, logger="llmgate.throttle"):
        if mode == "open":
            await limiter.admit(during)
            assert during.admission.store == "local"
        else:
            with pytest.raises(LimiterStoreUnavailable):
                await limiter.admit(during)
        throwaway_redis.start()
        await asyncio.sleep(0.1)  # past the probe interval
        after = make_ctx(key)
        await limiter.admit(after)
    assert after.admission.store == "primary"
    if mode == "open":
        await limiter.settle(during)  # settles in the store that admitted it
    await limiter.settle(after)
    messages = [r.getMessage() for r in caplog.records]
    assert any("is back after" in m for m in messages)
    assert limiter.stats["store_outages"] == 1
    client = build_client(throwaway_redis.url)
    assert await client.execute("EXISTS", "llmgate:w:k:k1|rpm") == 1  # counting in Redis again
    await client.aclose()
    await limiter.close()


async def test_the_server_runs_one_script_per_admission_and_per_settlement(throwaway_redis):
    client = build_client(throwaway_redis.url)
    settings = make_settings(
        limits={"rpm": 100, "tpm": 100_000, "max_concurrency": 5, "budget_usd": "10"},
        throttle={"global": {"rpm": 1000}, "models": {"gpt-4o": {"rps": 100}}},
    )
    limiter = ThrottleLimiter(settings, RedisBackend(client))
    await limiter.start()
    await client.execute("CONFIG", "RESETSTAT")
    for _ in range(10):
        ctx = make_ctx(make_key(), max_tokens=5)
        await limiter.admit(ctx)
        await limiter.settle(finish(ctx, input_tokens=3, output_tokens=2))
    info = (await client.execute("INFO", "commandstats")).decode()
    # Lines like `cmdstat_evalsha:calls=20,usec=...`.
    calls = {
        line.split(":")[0].removeprefix("cmdstat_"): int(line.split("calls=")[1].split(",")[0])
        for line in info.splitlines()
        if line.startswith("cmdstat_")
    }
    # Commands run inside a script are counted too; what a client can send besides: nothing.
    assert calls.pop("evalsha") == 20
    assert not {"eval", "script|load", "multi", "exec"} & calls.keys()
    inside_scripts = {"time", "hgetall", "hdel", "hincrby", "hexists", "pexpire", "expire", "zadd", "zrem"}
    inside_scripts |= {"zremrangebyscore", "zcard", "get", "incrby", "config|resetstat", "hmget", "hset", "mget", "del"}
    assert set(calls) <= inside_scripts
    await client.aclose()
