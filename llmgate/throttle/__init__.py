"""The throttling engine: exact sliding-window rates, tokens, concurrency, budgets, step policies.

`build_limiter(settings)` gives the gateway's Limiter: in-memory counters for one
process, or Redis-shared counters when `gateway.redis_url` is set (with the
in-memory fallback that `limits.on_store_error` asks for).
"""

from __future__ import annotations

from collections.abc import Callable

from llmgate.config import ModelSettings, Price, Settings
from llmgate.throttle.backend import LimiterStoreUnavailable
from llmgate.throttle.estimate import CostEstimator, build_cost_estimator
from llmgate.throttle.failover import FailoverBackend
from llmgate.throttle.limiter import ThrottleLimiter, new_stats
from llmgate.throttle.policies import KEY_SIGNALS

__all__ = ["LimiterStoreUnavailable", "ThrottleLimiter", "build_limiter"]


def build_limiter(
    settings: Settings,
    *,
    estimate_cost_nusd: CostEstimator | None = None,
    price_of: Callable[[ModelSettings], Price | None] | None = None,
    redis_prefix: str = "llmgate:",
    probe_interval_s: float = 1.0,
) -> ThrottleLimiter:
    """The limiter for these settings. In the lifespan: `await limiter.start()` (loads the
    Redis scripts), `await limiter.reconcile(...)`, and `await limiter.close()` at shutdown."""
    estimator = estimate_cost_nusd or build_cost_estimator(settings, price_of)
    stats = new_stats()
    url = settings.gateway.redis_url
    if not url:
        return ThrottleLimiter(settings, estimate_cost_nusd=estimator, stats=stats)
    # Imported here: memory-only gateways never load the Redis client (llmgate.throttle.resp, hiredis).
    from llmgate.throttle.redis import RedisBackend, build_client

    signals = {p.signal for p in settings.throttle.policies}
    redis = RedisBackend(
        build_client(url),
        prefix=redis_prefix,
        track_inflight="inflight" in signals,
        read_key_signals=bool(signals & KEY_SIGNALS),
    )
    backend = FailoverBackend(redis, settings.limits.on_store_error, stats, probe_interval_s=probe_interval_s)
    return ThrottleLimiter(settings, backend, estimate_cost_nusd=estimator, stats=stats)
