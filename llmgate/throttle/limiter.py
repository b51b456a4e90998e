"""`ThrottleLimiter`: the gateway's Limiter (admit / settle) over a counter backend.

Admission: evaluate the step policies that apply to the key, resolve the plan of
checks for (key, model, steps in force), reserve tokens (prompt + output
allowance) only when a token limit or budget is in force, reserve the estimated
cost against budgets, and run the plan atomically in the backend. A refused
request gets a 429: `Throttled` (rate, concurrency) with Retry-After, or
`QuotaExceeded` (budget). When a scope of the plan sets `max_wait_ms`, requests
pass through that scope's line, first come first served: the head is tried (and
retried when capacity is due) until admitted or out of its `max_wait_ms`.

Settlement: refund or charge the token reservation in the bucket it was made in,
settle the cost estimate to the real cost, release concurrency, feed the
tokens-today and upstream-error signals.

Semantics of every limit of N per window W: no more than N admitted in any
sliding interval of length W, under any concurrency, in one process or across
processes sharing Redis; a refusal means admitting would exceed N over an
interval of at most W + W/60 (see window.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from llmgate import tokens as token_counting
from llmgate.config import LimitSet, Settings
from llmgate.cost import format_usd
from llmgate.errors import GatewayError, QuotaExceeded, Throttled, UpstreamError
from llmgate.throttle.backend import Admission, Backend, LimiterStoreUnavailable, Refusal, StoreUnavailable
from llmgate.throttle.estimate import CostEstimator
from llmgate.throttle.headers import build_rate_headers
from llmgate.throttle.memory import MemoryBackend
from llmgate.throttle.periods import PeriodClock, PeriodIds, build_period_starts
from llmgate.throttle.policies import ErrorRate, PolicyBook, SignalReader, StepIndex
from llmgate.throttle.rules import Plan, Scope, build_plan, build_scopes, build_team_limit_set
from llmgate.types import KeyInfo, RequestContext

STEP_HEADER = "x-llmgate-throttle-step"
# How often the head of a line re-checks a limit that frees on settle elsewhere.
_POLL_S = 0.05
_PLAN_CACHE_MAX = 10_000
_NANO = 1_000_000_000


def new_stats() -> dict[str, int]:
    return {
        "admitted": 0,
        "throttled": 0,
        "quota_exceeded": 0,
        "queued": 0,
        "store_errors": 0,
        "store_outages": 0,
        "store_fallback_admissions": 0,
        "store_refusals": 0,
    }


class WaitLine:
    """The FIFO of requests waiting for one scope's capacity."""

    __slots__ = ("nudge", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[asyncio.Event] = deque()
        self.nudge = asyncio.Event()


class ThrottleLimiter:
    def __init__(
        self,
        settings: Settings,
        backend: Backend | None = None,
        *,
        estimate_cost_nusd: CostEstimator | None = None,
        clock: Callable[[], float] = time.time,
        stats: dict[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.stats = stats if stats is not None else new_stats()
        self._estimate = estimate_cost_nusd
        self._clock = clock
        self._policies = PolicyBook(settings.throttle.policies)
        self._errors = (
            ErrorRate(settings.throttle.error_rate_window_s)
            if "upstream_error_rate" in self._policies.signals
            else None
        )
        self._periods = PeriodClock()
        self._plans: dict[tuple[str, str, tuple[StepIndex, ...]], tuple[KeyInfo, Plan]] = {}
        self._lines: dict[str, WaitLine] = {}
        self._teams: dict[str, LimitSet] = dict(settings.throttle.teams)
        # Concurrency slots in Redis are held by a member unique to this admission (a
        # caller may reuse its x-request-id, which must never merge two slots).
        self._member_prefix = uuid.uuid4().hex[:12]
        self._members = itertools.count()
        self._default_max_tokens = settings.limits.default_max_tokens
        self._count_cached = settings.limits.count_cached_input

    async def start(self) -> None:
        """At start-up: load the Redis scripts (a no-op in memory)."""
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()

    async def ping(self) -> bool:
        """For /health/ready: whether the limiter's store answers (always, in memory)."""
        return await self.backend.ping()

    def set_team_limits(self, team: str, record: Mapping[str, Any] | None) -> None:
        """A team's limits from its database record (rpm, tpm, budget_usd, ...; other fields
        ignored), replacing the config's `[throttle.teams.<team>]`; None goes back to config."""
        if record is None:
            configured = self.settings.throttle.teams.get(team)
            if configured is None:
                self._teams.pop(team, None)
            else:
                self._teams[team] = configured
        else:
            self._teams[team] = build_team_limit_set(record)
        self._plans.clear()

    # -- admission -------------------------------------------------------------------

    async def admit(self, ctx: RequestContext) -> None:
        key = ctx.key
        if key is None:
            raise RuntimeError("admit() needs an authenticated context (ctx.key)")
        now = self._clock()
        periods = self._periods.ids(now)
        plan = self._plan(key, ctx.model, now, periods)
        if plan.needs_tokens or plan.budgets:
            self._reserve_tokens(ctx)
        estimate = self._estimate(ctx) if plan.budgets and self._estimate is not None else 0
        if plan.waits:
            # Through the line even when capacity is free: with a store that answers
            # asynchronously, a later arrival could otherwise be decided first.
            admission = await self._wait(ctx, self._line_scope(plan), estimate, time.monotonic())
            return self._admitted(ctx, admission)
        outcome = await self._acquire(plan, ctx, estimate, periods, now)
        if isinstance(outcome, Refusal):
            raise self._refusal_error(ctx, plan, outcome)
        self._admitted(ctx, outcome)

    def _admitted(self, ctx: RequestContext, admission: Admission) -> None:
        ctx.admission = admission
        plan = admission.plan
        self.stats["admitted"] += 1
        if plan.rates:
            ctx.headers.update(build_rate_headers(plan, admission.used, admission.reset_ms))
        if plan.steps_header is not None:
            ctx.headers[STEP_HEADER] = plan.steps_header

    def _plan(self, key: KeyInfo, model: str, now: float, periods: PeriodIds) -> Plan:
        steps: tuple[StepIndex, ...] = ()
        if self._policies:
            steps = self._policies.steps_for(key, self._signal_reader(key, periods), now)
        cache_key = (key.id, model, steps)
        cached = self._plans.get(cache_key)
        if cached is not None:
            if cached[0] is key:
                return cached[1]
            if cached[0] == key:  # the same record, fetched again: compare by identity next time
                self._plans[cache_key] = (key, cached[1])
                return cached[1]
        in_force = [(self._policies.policies[i], step) for i, step in steps]
        plan = build_plan(build_scopes(self.settings, key, model, in_force, self._teams), key, in_force)
        if len(self._plans) >= _PLAN_CACHE_MAX:
            self._plans.clear()
        self._plans[cache_key] = (key, plan)
        return plan

    def _reserve_tokens(self, ctx: RequestContext) -> None:
        body = ctx.body
        if not ctx.prompt_tokens:
            if ctx.surface == "embeddings":
                ctx.prompt_tokens = token_counting.count_embedding_input(body.get("input"), ctx.model)
            else:
                ctx.prompt_tokens = token_counting.count_request(body, ctx.model)
        allowance = 0
        if ctx.surface != "embeddings":
            asked = body.get("max_completion_tokens") or body.get("max_tokens")
            allowance = asked if isinstance(asked, int) and asked > 0 else self._default_max_tokens
        ctx.reserved_tokens = ctx.prompt_tokens + allowance

    async def _acquire(
        self, plan: Plan, ctx: RequestContext, estimate: int, periods: PeriodIds, now: float
    ) -> Admission | Refusal:
        try:
            member = f"{self._member_prefix}:{next(self._members)}"
            outcome = await self.backend.acquire(plan, ctx.reserved_tokens, estimate, member, periods, int(now * 1000))
        except StoreUnavailable:
            self.stats["store_refusals"] += 1
            raise LimiterStoreUnavailable(
                "The rate limiter's store is unavailable; try again shortly.", retry_after=1
            ) from None
        if isinstance(outcome, Refusal):
            outcome.estimate_nusd = estimate
        return outcome

    # -- waiting ---------------------------------------------------------------------

    def _line_scope(self, plan: Plan) -> Scope:
        """The scope whose line the request joins: one already waited on, else the first that waits."""
        waiting = [scope for scope in plan.scopes if scope.limits.max_wait_ms > 0]
        for scope in waiting:
            line = self._lines.get(scope.id)
            if line is not None and line.waiters:
                return scope
        return waiting[0]

    def _may_wait(self, scope: Scope, refusal: Refusal, arrived: float, now: float) -> bool:
        if refusal.kind == "budget" or refusal.never or scope.limits.max_wait_ms <= 0:
            return False
        deadline = arrived + scope.limits.max_wait_ms / 1000
        return now + (refusal.retry_ms or 0) / 1000 <= deadline

    async def _wait(self, ctx: RequestContext, scope: Scope, estimate: int, arrived: float) -> Admission:
        """Queue behind earlier arrivals of `scope`; at the head, try (and retry) until admitted
        or out of time."""
        line = self._lines.get(scope.id)
        if line is None:
            line = self._lines[scope.id] = WaitLine()
        turn = asyncio.Event()
        queued = bool(line.waiters)
        if queued:
            self.stats["queued"] += 1
        line.waiters.append(turn)
        deadline = arrived + scope.limits.max_wait_ms / 1000
        plan: Plan | None = None
        refusal: Refusal | None = None
        try:
            while True:
                if line.waiters[0] is not turn:
                    if not await _wait_event(turn, deadline - time.monotonic()):
                        raise self._timeout_error(ctx, plan, refusal, scope)
                    continue
                if refusal is not None:
                    await self._sleep_for_capacity(line, refusal, deadline)
                now = self._clock()
                periods = self._periods.ids(now)
                plan = self._plan(ctx.key, ctx.model, now, periods)  # type: ignore[arg-type]
                outcome = await self._acquire(plan, ctx, estimate, periods, now)
                if isinstance(outcome, Admission):
                    return outcome
                if not queued:
                    queued = True
                    self.stats["queued"] += 1
                refusal = outcome
                blocked_by = blocking_scope(plan, refusal)
                if blocked_by.id != scope.id and not self._may_wait(blocked_by, refusal, arrived, time.monotonic()):
                    raise self._refusal_error(ctx, plan, refusal)
                if not self._may_wait(scope, refusal, arrived, time.monotonic()):
                    raise self._refusal_error(ctx, plan, refusal)
        finally:
            line.waiters.remove(turn)
            if line.waiters:
                line.waiters[0].set()
            else:
                self._lines.pop(scope.id, None)

    async def _sleep_for_capacity(self, line: WaitLine, refusal: Refusal, deadline: float) -> None:
        """Sleep until the refusal's retry time, or until a settle in this scope frees capacity."""
        pause = refusal.retry_ms / 1000 if refusal.retry_ms is not None else _POLL_S
        pause = min(max(pause, 0.001), max(0.0, deadline - time.monotonic()))
        line.nudge.clear()
        await _wait_event(line.nudge, pause)

    def _timeout_error(
        self, ctx: RequestContext, plan: Plan | None, refusal: Refusal | None, scope: Scope
    ) -> GatewayError:
        if plan is not None and refusal is not None:
            return self._refusal_error(ctx, plan, refusal)
        self.stats["throttled"] += 1
        waited = scope.limits.max_wait_ms
        return Throttled(
            f"Rate limit reached for {scope.label}: no capacity within max_wait_ms {waited}. Retry after 1 s.",
            retry_after=1,
        )

    # -- refusals --------------------------------------------------------------------

    def _refusal_error(self, ctx: RequestContext, plan: Plan, refusal: Refusal) -> GatewayError:
        headers = build_rate_headers(plan, refusal.used, refusal.reset_ms) if plan.rates else {}
        if plan.steps_header is not None:
            headers[STEP_HEADER] = plan.steps_header
        # On a refusal the headers travel on the error only: surfaces send the error's
        # headers and ctx.headers together, and a header must not appear twice.
        if refusal.kind == "budget":
            self.stats["quota_exceeded"] += 1
            budget = plan.budgets[refusal.index]
            period = "in total" if budget.period == "total" else f"this {budget.period}"
            message = (
                f"Budget exceeded for {budget.scope.label}: {format_usd(refusal.spent_nusd)} of "
                f"{format_usd(budget.limit_nusd)} USD spent {period}"
            )
            if refusal.spent_nusd < budget.limit_nusd:
                message += f", and this request may cost up to {format_usd(refusal.estimate_nusd)} USD"
            return QuotaExceeded(message + ".", headers=headers)
        self.stats["throttled"] += 1
        if refusal.kind == "concurrency":
            check = plan.concurrency[refusal.index]
            via = _via(check.scope, "max_concurrency")
            return Throttled(
                f"Concurrency limit reached for {check.scope.label} (max_concurrency {check.limit}{via}). "
                "Retry after 1 s.",
                retry_after=1,
                headers=headers,
            )
        rate = plan.rates[refusal.index]
        via = _via(rate.scope, rate.name)
        retry_s = refusal.retry_ms / 1000 if refusal.retry_ms is not None else rate.window_ms / 1000
        seconds = max(1, math.ceil(retry_s))
        if refusal.never and rate.limit > 0 and rate.tokens:
            message = (
                f"Request too large for {rate.scope.label} ({rate.name} {rate.limit}{via}): "
                f"it reserves {ctx.reserved_tokens} tokens."
            )
        else:
            message = f"Rate limit reached for {rate.scope.label} ({rate.name} {rate.limit}{via}). "
            message += f"Retry after {seconds} s."
        return Throttled(message, retry_after=seconds, headers=headers)

    # -- settlement ------------------------------------------------------------------

    async def settle(self, ctx: RequestContext) -> None:
        admission = ctx.admission
        if not isinstance(admission, Admission) or admission.settled:
            return
        admission.settled = True
        usage = ctx.usage
        used = 0
        if usage is not None:
            used = usage.input_tokens + usage.output_tokens
            if not self._count_cached:
                used -= usage.cached_input_tokens
        now = self._clock()
        now_ms = int(now * 1000)
        try:
            await self.backend.release(admission, used, ctx.cost_nusd, now_ms)
        finally:
            if self._errors is not None:
                failed = ctx.status >= 500 or isinstance(ctx.error, UpstreamError)
                self._errors.record(failed, now_ms)
            if self._policies:
                self._policies.refresh_gateway(self._signal_reader(None, admission.periods), now)
            if self._lines:
                for scope in admission.plan.scopes:
                    line = self._lines.get(scope.id)
                    if line is not None:
                        line.nudge.set()

    # -- signals, views, reconciliation -------------------------------------------------

    def _signal_reader(self, key: KeyInfo | None, periods: PeriodIds) -> SignalReader:
        backend = self.backend
        errors = self._errors
        clock = self._clock

        def read(signal: str) -> float:
            if signal == "inflight":
                return backend.inflight()
            if signal == "upstream_error_rate":
                return errors.rate(int(clock() * 1000)) if errors is not None else 0.0
            if key is None or key.is_master:
                return 0
            figures = backend.key_signals(f"k:{key.id}", periods)
            if signal == "tokens_today":
                return figures.tokens_today
            if signal == "spend_today_usd":
                return figures.spend_day_nusd / _NANO
            return figures.spend_month_nusd / _NANO

        return read

    def step_in_force(self, key: KeyInfo) -> list[dict[str, Any]]:
        """The policies applying to `key` and the step of each in force (admin view, dashboard)."""
        now = self._clock()
        return self._policies.describe(key, self._signal_reader(key, self._periods.ids(now)), now)

    def period_starts(self) -> dict[str, datetime]:
        """UTC start of the current day, ISO week, month (and the epoch for total):
        what the store sums spend from for `reconcile`."""
        return build_period_starts(self._clock())

    async def reconcile(
        self,
        spend_by_key: Mapping[str, Mapping[str, int]],
        spend_by_team: Mapping[str, Mapping[str, int]],
        tokens_today_by_key: Mapping[str, int],
        *,
        spend_global: Mapping[str, int] | None = None,
        spend_by_model: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """Raise the spend and tokens-today counters to at least the usage records' figures.

        Spend maps are `{id: {period: nano-USD}}` with periods day | week | month | total
        summed from `period_starts()`; tokens today is `{key id: tokens}` since UTC midnight.
        """
        spend: dict[str, Mapping[str, int]] = {}
        spend.update({f"k:{k}": v for k, v in spend_by_key.items()})
        spend.update({f"t:{t}": v for t, v in spend_by_team.items()})
        spend.update({f"m:{m}": v for m, v in (spend_by_model or {}).items()})
        if spend_global:
            spend["g"] = spend_global
        tokens_today = {f"k:{k}": v for k, v in tokens_today_by_key.items()}
        await self.backend.reconcile(spend, tokens_today, self._periods.ids(self._clock()))

    async def reconcile_from_usage(
        self,
        spend_by_key: Callable[[datetime], Mapping[str, int]],
        spend_by_team: Callable[[datetime], Mapping[str, int]],
        tokens_by_key: Callable[[datetime], Mapping[str, int]],
    ) -> None:
        """`reconcile` from usage-record queries, each `since -> {id: amount}` (run in a thread),
        e.g. `reconcile_from_usage(store.spend_by_key, store.spend_by_team, store.tokens_by_key)`."""
        starts = self.period_starts()
        by_key: dict[str, dict[str, int]] = {}
        by_team: dict[str, dict[str, int]] = {}
        for period, since in starts.items():
            for key_id, nusd in (await asyncio.to_thread(spend_by_key, since)).items():
                by_key.setdefault(key_id, {})[period] = nusd
            for team, nusd in (await asyncio.to_thread(spend_by_team, since)).items():
                by_team.setdefault(team, {})[period] = nusd
        tokens_today = await asyncio.to_thread(tokens_by_key, starts["day"])
        await self.reconcile(by_key, by_team, tokens_today)


def blocking_scope(plan: Plan, refusal: Refusal) -> Scope:
    if refusal.kind == "rate":
        return plan.rates[refusal.index].scope
    if refusal.kind == "concurrency":
        return plan.concurrency[refusal.index].scope
    return plan.budgets[refusal.index].scope


def _via(scope: Scope, limit_name: str) -> str:
    label = scope.limits.via.get(limit_name)
    return f", policy {label}" if label else ""


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
