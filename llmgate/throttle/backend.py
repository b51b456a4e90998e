"""The seam between the limiter and where counters live (memory or Redis).

A backend runs one plan atomically: every check of every scope passes and is
committed together, or nothing is committed. It also keeps the spend counters
(nano-USD per scope and UTC period) and the per-key tokens-today counter that
step policies read.

Spend bookkeeping: the key scope's spend is kept for every period (so a budget
added later, or a spend signal, starts from the truth); a budget on another
scope keeps only its own period. At admission each budget's counter takes the
request's estimated cost; at settlement every kept counter moves by the actual
cost minus what it reserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from llmgate.errors import GatewayError
from llmgate.throttle.periods import PERIOD_TTL_S, PERIODS, PeriodIds
from llmgate.throttle.rules import Plan


class StoreUnavailable(Exception):
    """The shared limiter store (Redis) could not be reached."""


class LimiterStoreUnavailable(GatewayError):
    """`on_store_error = "closed"` and the limiter store is down."""

    status = 503
    type = "service_unavailable"
    code = "limiter_unavailable"


@dataclass(slots=True)
class KeySignals:
    """The per-key signals: tokens today, spend today and this month (nano-USD)."""

    tokens_today: int = 0
    spend_day_nusd: int = 0
    spend_month_nusd: int = 0


@dataclass(slots=True)
class Admission:
    """What an admitted request holds until it is settled."""

    plan: Plan
    tokens: int
    estimate_nusd: int
    member: str
    periods: PeriodIds
    buckets: list[int]  # per rate check: the bucket the reservation went to
    used: list[int]  # per rate check: the count after this admission
    reset_ms: list[int]  # per rate check: until the window is empty
    store: str = "primary"
    settled: bool = False


@dataclass(slots=True)
class Refusal:
    """Why a plan was refused, and when it might pass."""

    kind: str  # rate | concurrency | budget
    index: int  # into plan.rates, plan.concurrency or plan.budgets
    retry_ms: int | None  # None: not known (concurrency frees on settle) or never
    never: bool  # the request alone exceeds the limit
    used: list[int] = field(default_factory=list)
    reset_ms: list[int] = field(default_factory=list)
    spent_nusd: int = 0
    estimate_nusd: int = 0


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Whether the store answers (readiness)."""
        ...

    async def acquire(
        self, plan: Plan, tokens: int, estimate_nusd: int, member: str, periods: PeriodIds, now_ms: int
    ) -> Admission | Refusal: ...

    async def release(self, admission: Admission, tokens_used: int, cost_nusd: int, now_ms: int) -> None: ...

    def key_signals(self, key_scope: str, periods: PeriodIds) -> KeySignals: ...

    def inflight(self) -> int: ...

    async def reconcile(
        self, spend: Mapping[str, Mapping[str, int]], tokens_today: Mapping[str, int], periods: PeriodIds
    ) -> None:
        """Raise counters to at least the stored figures (scope id -> period -> nano-USD)."""
        ...


def spend_counter(scope_id: str, period_id: str) -> str:
    return f"{scope_id}|{period_id}"


def tokens_today_counter(key_scope: str, periods: PeriodIds) -> str:
    return f"{key_scope}|tok|{periods.day}"


def build_reservations(plan: Plan, periods: PeriodIds) -> list[tuple[str, int]]:
    """(spend counter, budget limit) for each budget of the plan (memoized per day)."""
    memo = plan.memo.get("reservations")
    if memo is None or memo[0] != periods.day:
        out = [(spend_counter(b.scope.id, periods.of(b.period)), b.limit_nusd) for b in plan.budgets]
        memo = plan.memo["reservations"] = (periods.day, out)
    return memo[1]  # type: ignore[no-any-return]


def build_spend_targets(plan: Plan, periods: PeriodIds) -> list[tuple[str, bool, int]]:
    """(spend counter, holds the estimate?, ttl seconds) settled per request (memoized per day)."""
    memo = plan.memo.get("spend")
    if memo is not None and memo[0] == periods.day:
        return memo[1]  # type: ignore[no-any-return]
    reserved = {(b.scope.id, b.period) for b in plan.budgets}
    out = []
    if plan.key_scope is not None:
        for period in PERIODS:
            counter = spend_counter(plan.key_scope, periods.of(period))
            out.append((counter, (plan.key_scope, period) in reserved, PERIOD_TTL_S[period]))
    for b in plan.budgets:
        if b.scope.id != plan.key_scope:
            out.append((spend_counter(b.scope.id, periods.of(b.period)), True, PERIOD_TTL_S[b.period]))
    plan.memo["spend"] = (periods.day, out)
    return out


def build_spend_deltas(
    plan: Plan, periods: PeriodIds, cost_nusd: int, estimate_nusd: int
) -> list[tuple[str, int, int]]:
    """(spend counter, delta, ttl seconds) to apply when a request settles."""
    return [
        (counter, cost_nusd - estimate_nusd if holds else cost_nusd, ttl)
        for counter, holds, ttl in build_spend_targets(plan, periods)
    ]
