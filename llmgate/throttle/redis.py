"""The Redis backend: one Lua script per admission and one per settlement.

The admission script receives every key the plan touches (each rate counter,
concurrency set and budget counter, the gateway-wide in-flight set and the
key's signal counters), reads Redis `TIME` as the one clock all gateway
processes share, checks everything, and commits everything or nothing: exactly
one round trip, atomic across processes.

Layout (all under a prefix, default `llmgate:`):
- `w:<scope>|<limit>`: a hash of sub-bucket id -> count (window.py's algorithm;
  bucket ids are `floor(now_ms * 60 / window_ms)`, exact in Lua doubles);
- `c:<scope>|conc` and `inflight`: sorted sets of request ids scored by lease
  expiry, so a crashed process's slots free themselves after `lease_s`;
- `s:<scope>|<period id>`: spend in nano-USD; `s:k:<key>|tok|<day>`: tokens today.
A Redis Cluster needs every key in one slot: give a prefix with a hash tag,
such as `{llmgate}:`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmgate.throttle.backend import (
    Admission,
    KeySignals,
    Refusal,
    StoreUnavailable,
    build_reservations,
    build_spend_targets,
    spend_counter,
    tokens_today_counter,
)
from llmgate.throttle.periods import PERIOD_TTL_S, PeriodIds
from llmgate.throttle.redis_lua import ADMIT as _ADMIT
from llmgate.throttle.redis_lua import RAISE_TO as _RAISE_TO
from llmgate.throttle.redis_lua import SETTLE as _SETTLE
from llmgate.throttle.resp import (
    SLOT,
    ConnectionFailed,
    NotServingError,
    RespClient,
    ResponseError,
    Script,
    ScriptCall,
)
from llmgate.throttle.rules import Plan

_RECONCILE_BATCH = 500


class _PlanCalls:
    """A plan's encoded admission and settlement calls for one day."""

    __slots__ = ("admit", "day", "settle", "signals", "spend_holds", "token_rates")

    def __init__(
        self,
        day: str,
        signals: bool,
        admit: ScriptCall,
        settle: ScriptCall,
        token_rates: list[int],
        spend_holds: list[bool],
    ) -> None:
        self.day = day
        self.signals = signals
        self.admit = admit
        self.settle = settle
        self.token_rates = token_rates  # indexes into plan.rates of the token-counting rates
        self.spend_holds = spend_holds  # per settled spend counter: does it hold the estimate?


def build_client(url: str, timeout_s: float = 1.0) -> RespClient:
    """A client that fails fast (no hidden retries): the failover decides what a failure means.

    redis:// and rediss:// URLs only; anything else is a ValueError naming the scheme."""
    return RespClient.from_url(url, timeout_s=timeout_s)


class RedisBackend:
    def __init__(
        self,
        client: RespClient,
        *,
        prefix: str = "llmgate:",
        lease_s: float = 900.0,
        track_inflight: bool = True,
        read_key_signals: bool = True,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lease_ms = int(lease_s * 1000)
        self.track_inflight = track_inflight
        self.read_key_signals = read_key_signals
        self._admit = Script(_ADMIT)
        self._settle = Script(_SETTLE)
        self._raise_to = Script(_RAISE_TO)
        self._inflight = 0
        self._signals: dict[str, tuple[str, KeySignals]] = {}

    async def start(self) -> None:
        """Load the scripts ahead of the first request (best effort)."""
        try:
            for script in (self._admit, self._settle, self._raise_to):
                await self.client.script_load(script.source)
        except (ConnectionFailed, ResponseError):
            return

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return await self.client.ping()
        except (ConnectionFailed, ResponseError):
            return False

    async def _run(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self._call(script.call(keys, args))

    async def _call(self, call: ScriptCall, values: Sequence[Any] = ()) -> Any:
        # No retry here: the client writes a command only to a connection it believes alive
        # (one the server closed while quiet, as a restart does, is replaced first), and a
        # command already written whose reply was lost may have run, so it is never resent.
        try:
            return await self.client.run(call, values)
        except NotServingError as exc:
            raise StoreUnavailable(str(exc)) from exc
        except ConnectionFailed as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _calls(self, plan: Plan, periods: PeriodIds) -> _PlanCalls:
        """The plan's admission and settlement calls, encoded once per plan and day (keys name
        the day's budget periods); each request fills only the slots."""
        memo: _PlanCalls | None = plan.memo.get(self)
        if memo is None or memo.day != periods.day:
            memo = plan.memo[self] = self._build_calls(plan, periods)
        return memo

    def _build_calls(self, plan: Plan, periods: PeriodIds) -> _PlanCalls:
        p = self.prefix
        signals = self.read_key_signals and plan.key_scope is not None
        inflight = "1" if self.track_inflight else "0"
        # _ADMIT: KEYS rates, concurrency, budgets, inflight[, tokens today, spend day, spend month];
        # ARGV nr, nc, nb, member, lease, tokens, estimate, track, signals, then per rate
        # (window, limit, tokens?), per concurrency its limit, per budget (limit, ttl).
        keys = [f"{p}w:{r.counter}" for r in plan.rates]
        keys += [f"{p}c:{c.counter}" for c in plan.concurrency]
        reservations = build_reservations(plan, periods)
        keys += [f"{p}s:{counter}" for counter, _ in reservations]
        keys.append(f"{p}inflight")
        if signals:
            keys += self._signal_keys(plan.key_scope, periods)  # type: ignore[arg-type]
        args: list[Any] = [len(plan.rates), len(plan.concurrency), len(reservations), SLOT, self.lease_ms]
        args += [SLOT, SLOT, inflight, "1" if signals else "0"]
        for r in plan.rates:
            args += (r.window_ms, r.limit, "1" if r.tokens else "0")
        args += [c.limit for c in plan.concurrency]
        for (_, limit), budget in zip(reservations, plan.budgets, strict=True):
            args += (limit, PERIOD_TTL_S[budget.period])
        admit = self._admit.call(keys, args)
        # _SETTLE: KEYS token rates, concurrency, spend counters, inflight[, tokens today];
        # ARGV nt, nc, ns, member, delta, used, track, signals, then per token rate (window,
        # bucket), per spend counter (change, ttl).
        token_rates = [i for i, r in enumerate(plan.rates) if r.tokens]
        spend = build_spend_targets(plan, periods)
        keys = [f"{p}w:{plan.rates[i].counter}" for i in token_rates]
        keys += [f"{p}c:{c.counter}" for c in plan.concurrency]
        keys += [f"{p}s:{counter}" for counter, _, _ in spend]
        keys.append(f"{p}inflight")
        if signals:
            keys.append(f"{p}s:{tokens_today_counter(plan.key_scope, periods)}")  # type: ignore[arg-type]
        args = [len(token_rates), len(plan.concurrency), len(spend), SLOT, SLOT, SLOT, inflight]
        args.append("1" if signals else "0")
        for i in token_rates:
            args += (plan.rates[i].window_ms, SLOT)
        for _, _, ttl in spend:
            args += (SLOT, ttl)
        settle = self._settle.call(keys, args)
        return _PlanCalls(periods.day, signals, admit, settle, token_rates, [holds for _, holds, _ in spend])

    async def acquire(
        self, plan: Plan, tokens: int, estimate_nusd: int, member: str, periods: PeriodIds, now_ms: int
    ) -> Admission | Refusal:
        calls = self._calls(plan, periods)
        signals = calls.signals
        reply = await self._call(calls.admit, (member, tokens, estimate_nusd))
        kind, index, retry, inflight = int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3])
        if self.track_inflight:
            self._inflight = inflight
        if signals:
            self._remember(plan.key_scope, periods, int(reply[4]), int(reply[5]), int(reply[6]))  # type: ignore[arg-type]
        n = len(plan.rates)
        per_rate = reply[7 : 7 + 3 * n]
        buckets = [int(v) for v in per_rate[0::3]]
        used = [int(v) for v in per_rate[1::3]]
        reset = [int(v) for v in per_rate[2::3]]
        if kind == 0:
            return Admission(plan, tokens, estimate_nusd, member, periods, buckets, used, reset)
        kinds = {1: "rate", 2: "concurrency", 3: "budget"}
        spent = [int(v) for v in reply[7 + 3 * n :]]
        return Refusal(
            kinds[kind],
            index - 1,
            retry if retry >= 0 else None,
            plan.concurrency[index - 1].limit == 0 if kind == 2 else retry < 0,
            used,
            reset,
            spent[index - 1] if kind == 3 else 0,
        )

    async def release(self, admission: Admission, tokens_used: int, cost_nusd: int, now_ms: int) -> None:
        plan = admission.plan
        calls = self._calls(plan, admission.periods)
        values: list[Any] = [admission.member, tokens_used - admission.tokens, tokens_used]
        values += [admission.buckets[i] for i in calls.token_rates]
        estimate = admission.estimate_nusd
        values += [cost_nusd - estimate if holds else cost_nusd for holds in calls.spend_holds]
        reply = await self._call(calls.settle, values)
        if self.track_inflight:
            self._inflight = int(reply[0])
        if calls.signals and plan.key_scope is not None:
            # build_spend_targets lists the key scope first: day, week, month, total.
            self._remember(plan.key_scope, admission.periods, int(reply[1]), int(reply[2]), int(reply[4]))

    def _signal_keys(self, key_scope: str, periods: PeriodIds) -> list[str]:
        p = self.prefix
        return [
            f"{p}s:{tokens_today_counter(key_scope, periods)}",
            f"{p}s:{spend_counter(key_scope, periods.day)}",
            f"{p}s:{spend_counter(key_scope, periods.month)}",
        ]

    def _remember(self, key_scope: str, periods: PeriodIds, tokens: int, day: int, month: int) -> None:
        self._signals[key_scope] = (periods.day, KeySignals(tokens, day, month))

    def key_signals(self, key_scope: str, periods: PeriodIds) -> KeySignals:
        """The figures the last script returned for this key (one request stale at most)."""
        known = self._signals.get(key_scope)
        if known is None or known[0] != periods.day:
            return KeySignals()
        return known[1]

    def inflight(self) -> int:
        return self._inflight

    async def reconcile(
        self, spend: Mapping[str, Mapping[str, int]], tokens_today: Mapping[str, int], periods: PeriodIds
    ) -> None:
        p = self.prefix
        items: list[tuple[str, int, int]] = []
        for scope_id, by_period in spend.items():
            for period, nusd in by_period.items():
                items.append((f"{p}s:{spend_counter(scope_id, periods.of(period))}", int(nusd), PERIOD_TTL_S[period]))
        for key_scope, count in tokens_today.items():
            items.append((f"{p}s:{tokens_today_counter(key_scope, periods)}", int(count), 172800))
        for start in range(0, len(items), _RECONCILE_BATCH):
            batch = items[start : start + _RECONCILE_BATCH]
            args: list[Any] = []
            for _, value, ttl in batch:
                args += (value, ttl)
            await self._run(self._raise_to, [k for k, _, _ in batch], args)
