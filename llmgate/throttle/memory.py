"""The in-memory backend: one process's counters, checked and committed without awaiting.

Nothing between the checks and the commit yields to the event loop, so one
admission is atomic with respect to every other coroutine of the process.
This backend also serves as the local fallback when Redis is down.
"""

from __future__ import annotations

from collections.abc import Mapping

from llmgate.throttle.backend import (
    Admission,
    KeySignals,
    Refusal,
    build_reservations,
    build_spend_targets,
    spend_counter,
    tokens_today_counter,
)
from llmgate.throttle.periods import PeriodIds
from llmgate.throttle.rules import Plan
from llmgate.throttle.window import SUB_BUCKETS, SlidingWindow


class MemoryBackend:
    def __init__(self) -> None:
        self.windows: dict[str, SlidingWindow] = {}
        self.concurrency: dict[str, int] = {}
        self.spend: dict[str, int] = {}
        self.tokens_today: dict[str, int] = {}
        self._inflight = 0
        self._day = -1
        self._generation = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    def _windows_of(self, plan: Plan) -> list[SlidingWindow]:
        """The plan's window objects, resolved once per plan (and again after a roll-over)."""
        memo = plan.memo.get(self)
        if memo is not None and memo[0] == self._generation:
            return memo[1]  # type: ignore[no-any-return]
        windows = []
        for rate in plan.rates:
            window = self.windows.get(rate.counter)
            if window is None:
                window = self.windows[rate.counter] = SlidingWindow(rate.window_ms)
            windows.append(window)
        plan.memo[self] = (self._generation, windows)
        return windows

    async def acquire(
        self, plan: Plan, tokens: int, estimate_nusd: int, member: str, periods: PeriodIds, now_ms: int
    ) -> Admission | Refusal:
        return self.acquire_now(plan, tokens, estimate_nusd, member, periods, now_ms)

    def acquire_now(
        self, plan: Plan, tokens: int, estimate_nusd: int, member: str, periods: PeriodIds, now_ms: int
    ) -> Admission | Refusal:
        if periods.day_number != self._day:
            self._roll_over(periods)
        windows = self._windows_of(plan)
        buckets = []
        used = []
        refusal: Refusal | None = None
        for i, rate in enumerate(plan.rates):
            window = windows[i]
            bucket = (now_ms * SUB_BUCKETS) // rate.window_ms
            count = window.used(bucket)
            buckets.append(bucket)
            used.append(count)
            cost = tokens if rate.tokens else 1
            if count + cost > rate.limit:
                wait = None if cost > rate.limit else window.wait_ms(now_ms, count + cost - rate.limit)
                if refusal is None or wait is None or (refusal.retry_ms is not None and wait > refusal.retry_ms):
                    refusal = Refusal("rate", i, wait, wait is None)
        budget = self._check_budgets(plan, periods, estimate_nusd) if plan.budgets else None
        if budget is not None:  # waiting cannot help a spent budget: it speaks first
            refusal = budget
        elif refusal is None and plan.concurrency:
            refusal = self._check_concurrency(plan)
        if refusal is not None:
            refusal.used = used
            refusal.reset_ms = [w.reset_ms(now_ms) for w in windows]
            return refusal
        reset = []
        for i, rate in enumerate(plan.rates):
            cost = tokens if rate.tokens else 1
            if cost:
                windows[i].add(buckets[i], cost)
                used[i] += cost
            reset.append(windows[i].reset_ms(now_ms))
        if plan.concurrency:
            concurrency = self.concurrency
            for check in plan.concurrency:
                concurrency[check.counter] = concurrency.get(check.counter, 0) + 1
        if estimate_nusd:
            for counter, _ in build_reservations(plan, periods):
                self.spend[counter] = self.spend.get(counter, 0) + estimate_nusd
        self._inflight += 1
        return Admission(plan, tokens, estimate_nusd, member, periods, buckets, used, reset)

    def _check_budgets(self, plan: Plan, periods: PeriodIds, estimate_nusd: int) -> Refusal | None:
        for i, (counter, limit) in enumerate(build_reservations(plan, periods)):
            spent = self.spend.get(counter, 0)
            if spent >= limit or spent + estimate_nusd > limit:
                return Refusal("budget", i, None, True, spent_nusd=spent)
        return None

    def _check_concurrency(self, plan: Plan) -> Refusal | None:
        for i, check in enumerate(plan.concurrency):
            if self.concurrency.get(check.counter, 0) + 1 > check.limit:
                return Refusal("concurrency", i, None, check.limit == 0)
        return None

    async def release(self, admission: Admission, tokens_used: int, cost_nusd: int, now_ms: int) -> None:
        self.release_now(admission, tokens_used, cost_nusd, now_ms)

    def release_now(self, admission: Admission, tokens_used: int, cost_nusd: int, now_ms: int) -> None:
        plan = admission.plan
        delta = tokens_used - admission.tokens
        if delta and plan.needs_tokens:
            windows = self._windows_of(plan)
            for i, rate in enumerate(plan.rates):
                if rate.tokens:
                    windows[i].adjust(admission.buckets[i], delta, (now_ms * SUB_BUCKETS) // rate.window_ms)
        for check in plan.concurrency:
            self.concurrency[check.counter] -= 1
        # Counted in the periods of the admission (a counter of a period that has
        # ended by now is dropped at the next day's roll-over).
        periods = admission.periods
        estimate = admission.estimate_nusd
        if cost_nusd or estimate:
            spend = self.spend
            for counter, holds, _ in build_spend_targets(plan, periods):
                change = cost_nusd - estimate if holds else cost_nusd
                if change:
                    spend[counter] = spend.get(counter, 0) + change
        if plan.key_scope is not None and tokens_used:
            counter = tokens_today_counter(plan.key_scope, periods)
            self.tokens_today[counter] = self.tokens_today.get(counter, 0) + tokens_used
        self._inflight -= 1

    def key_signals(self, key_scope: str, periods: PeriodIds) -> KeySignals:
        return KeySignals(
            tokens_today=self.tokens_today.get(tokens_today_counter(key_scope, periods), 0),
            spend_day_nusd=self.spend.get(spend_counter(key_scope, periods.day), 0),
            spend_month_nusd=self.spend.get(spend_counter(key_scope, periods.month), 0),
        )

    def inflight(self) -> int:
        return self._inflight

    async def reconcile(
        self, spend: Mapping[str, Mapping[str, int]], tokens_today: Mapping[str, int], periods: PeriodIds
    ) -> None:
        if periods.day_number != self._day:
            self._roll_over(periods)
        for scope_id, by_period in spend.items():
            for period, nusd in by_period.items():
                counter = spend_counter(scope_id, periods.of(period))
                self.spend[counter] = max(self.spend.get(counter, 0), int(nusd))
        for key_scope, count in tokens_today.items():
            counter = tokens_today_counter(key_scope, periods)
            self.tokens_today[counter] = max(self.tokens_today.get(counter, 0), int(count))

    def _roll_over(self, periods: PeriodIds) -> None:
        """A new UTC day: forget counters of periods that ended; drop idle windows."""
        current = {periods.day, periods.week, periods.month, periods.total}
        self.spend = {c: v for c, v in self.spend.items() if c.rsplit("|", 1)[1] in current}
        self.tokens_today = {c: v for c, v in self.tokens_today.items() if c.endswith(periods.day)}
        self.windows = {c: w for c, w in self.windows.items() if not w.is_empty()}
        self._generation += 1
        self._day = periods.day_number
