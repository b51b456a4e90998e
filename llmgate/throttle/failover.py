"""`on_store_error`: what the limiter does while its shared store (Redis) is down.

`open`: admit against local in-memory limits (each process enforces the limits on
its own traffic); `closed`: refuse (the limiter answers 503). Either way the first
failure of an outage is logged once as a warning, and counted in `stats`
(`store_errors` per failed call, `store_outages` per outage). During an outage
the store is probed again at most every `probe_interval_s`; the first call that
succeeds ends the outage (logged) and traffic returns to the shared counters.
Each admission settles in the store that admitted it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from llmgate.throttle.backend import Admission, Backend, KeySignals, Refusal, StoreUnavailable
from llmgate.throttle.memory import MemoryBackend
from llmgate.throttle.periods import PeriodIds
from llmgate.throttle.rules import Plan

log = logging.getLogger("llmgate.throttle")


class FailoverBackend:
    def __init__(
        self,
        primary: Backend,
        mode: str,
        stats: dict[str, int],
        *,
        local: MemoryBackend | None = None,
        probe_interval_s: float = 1.0,
        label: str = "redis",
    ) -> None:
        self.primary = primary
        self.local = local or MemoryBackend()
        self.mode = mode
        self.stats = stats
        self.probe_interval_s = probe_interval_s
        self.label = label
        self.down_since: float | None = None
        self._next_probe = 0.0

    async def start(self) -> None:
        await self.primary.start()

    async def close(self) -> None:
        await self.primary.close()

    async def ping(self) -> bool:
        return await self.primary.ping()

    @property
    def healthy(self) -> bool:
        return self.down_since is None

    def _skip_primary(self) -> bool:
        return self.down_since is not None and time.monotonic() < self._next_probe

    def _failed(self, exc: BaseException) -> None:
        self.stats["store_errors"] = self.stats.get("store_errors", 0) + 1
        now = time.monotonic()
        self._next_probe = now + self.probe_interval_s
        if self.down_since is None:
            self.down_since = now
            self.stats["store_outages"] = self.stats.get("store_outages", 0) + 1
            action = "falling back to local in-memory limits" if self.mode == "open" else "refusing requests (503)"
            log.warning("limiter store %s unavailable (%s); %s until it returns", self.label, exc, action)

    def _recovered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "limiter store %s is back after %.1f s; using shared limits again",
                self.label,
                time.monotonic() - self.down_since,
            )
            self.down_since = None

    async def acquire(
        self, plan: Plan, tokens: int, estimate_nusd: int, member: str, periods: PeriodIds, now_ms: int
    ) -> Admission | Refusal:
        if not self._skip_primary():
            try:
                outcome = await self.primary.acquire(plan, tokens, estimate_nusd, member, periods, now_ms)
            except StoreUnavailable as exc:
                self._failed(exc)
            else:
                self._recovered()
                return outcome
        if self.mode != "open":
            raise StoreUnavailable(f"limiter store {self.label} is unavailable")
        self.stats["store_fallback_admissions"] = self.stats.get("store_fallback_admissions", 0) + 1
        outcome = self.local.acquire_now(plan, tokens, estimate_nusd, member, periods, now_ms)
        if isinstance(outcome, Admission):
            outcome.store = "local"
        return outcome

    async def release(self, admission: Admission, tokens_used: int, cost_nusd: int, now_ms: int) -> None:
        if admission.store == "local":
            self.local.release_now(admission, tokens_used, cost_nusd, now_ms)
            return
        try:
            await self.primary.release(admission, tokens_used, cost_nusd, now_ms)
        except StoreUnavailable as exc:
            # The store's own expiry reclaims what this settle would have released.
            self._failed(exc)
        else:
            self._recovered()

    def key_signals(self, key_scope: str, periods: PeriodIds) -> KeySignals:
        source = self.local if self.down_since is not None and self.mode == "open" else self.primary
        return source.key_signals(key_scope, periods)

    def inflight(self) -> int:
        return self.primary.inflight() + self.local.inflight()

    async def reconcile(
        self, spend: Mapping[str, Mapping[str, int]], tokens_today: Mapping[str, int], periods: PeriodIds
    ) -> None:
        await self.local.reconcile(spend, tokens_today, periods)
        try:
            await self.primary.reconcile(spend, tokens_today, periods)
        except StoreUnavailable as exc:
            self._failed(exc)
