"""The Redis backend across a Redis restart: pooled connections from before it do not fail calls.

Needs a Redis it may restart, so it runs its own throwaway `redis-server`
(never the shared one); skipped with the reason when the binary is missing.
"""

from __future__ import annotations

import asyncio

from llmgate.throttle import LimiterStoreUnavailable, ThrottleLimiter
from llmgate.throttle.backend import StoreUnavailable
from llmgate.throttle.redis import RedisBackend, build_client
from tests.reliability.stores import ThrowawayRedis

from .conftest import make_ctx, make_key, make_settings


async def test_connections_pooled_before_a_restart_do_not_fail_calls_after_it() -> None:
    with ThrowawayRedis() as server:
        client = build_client(server.url)
        limiter = ThrottleLimiter(make_settings(limits={"rpm": 1000}), RedisBackend(client, prefix="restart:"))
        await limiter.start()
        key = make_key("k-restart")
        await asyncio.gather(*(limiter.admit(make_ctx(key)) for _ in range(6)))
        assert client.connected
        server.stop()
        outcomes = await asyncio.gather(*(limiter.admit(make_ctx(key)) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(o, LimiterStoreUnavailable) for o in outcomes), outcomes
        server.start()
        outcomes = await asyncio.gather(*(limiter.admit(make_ctx(key)) for _ in range(6)), return_exceptions=True)
        assert outcomes == [None] * 6, outcomes
        await limiter.close()


async def test_a_redis_that_stays_down_still_fails_fast() -> None:
    with ThrowawayRedis() as server:
        backend = RedisBackend(build_client(server.url), prefix="down:")
        await backend.start()
        server.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await backend._run(backend._admit, ["k"], [])
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("a stopped Redis must raise StoreUnavailable")
        assert loop.time() - started < 0.5
        await backend.close()
