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

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError

from llmgate.throttle.backend import (
    Admission,
    KeySignals,
    Refusal,
    StoreUnavailable,
    build_reservations,
    build_spend_deltas,
    spend_counter,
    tokens_today_counter,
)
from llmgate.throttle.periods import PERIOD_TTL_S, PeriodIds
from llmgate.throttle.rules import Plan

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nr, nc, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local member, lease = ARGV[4], tonumber(ARGV[5])
local tokens, estimate = tonumber(ARGV[6]), tonumber(ARGV[7])
local track, signals = ARGV[8] == '1', ARGV[9] == '1'
local a = 10
local windows, buckets, costs, used, reset, newest = {}, {}, {}, {}, {}, {}
local kind, index, retry = 0, 0, -1
local function leaves(id, window) return math.ceil((id + 61) * window / 60) end
for i = 1, nr do
  local window, limit = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local cost = 1
  if ARGV[a + 2] == '1' then cost = tokens end
  a = a + 3
  local b = math.floor(now * 60 / window)
  local raw = redis.call('HGETALL', KEYS[i])
  local sum, ids, counts = 0, {}, {}
  for j = 1, #raw, 2 do
    local id = tonumber(raw[j])
    if id < b - 60 then
      redis.call('HDEL', KEYS[i], raw[j])
    else
      local v = tonumber(raw[j + 1])
      sum = sum + v
      ids[#ids + 1] = id
      counts[id] = v
      if newest[i] == nil or id > newest[i] then newest[i] = id end
    end
  end
  windows[i], buckets[i], costs[i], used[i] = window, b, cost, sum
  if sum + cost > limit then
    local wait = -1
    if cost <= limit then
      table.sort(ids)
      local freed, excess = 0, sum + cost - limit
      for _, id in ipairs(ids) do
        freed = freed + counts[id]
        if freed >= excess then
          wait = math.max(0, leaves(id, window) - now)
          break
        end
      end
    end
    if kind ~= 1 or wait < 0 or (retry >= 0 and wait > retry) then
      kind, index, retry = 1, i, wait
    end
  end
end
local spent = {}
for i = 1, nb do
  local limit = tonumber(ARGV[a + nc + (i - 1) * 2])
  spent[i] = tonumber(redis.call('GET', KEYS[nr + nc + i]) or '0')
  if kind ~= 3 and (spent[i] >= limit or spent[i] + estimate > limit) then
    kind, index, retry = 3, i, -1
  end
end
for i = 1, nc do
  local limit = tonumber(ARGV[a + i - 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[nr + i], '-inf', now)
  if kind == 0 and redis.call('ZCARD', KEYS[nr + i]) + 1 > limit then
    kind, index, retry = 2, i, -1
  end
end
local base = nr + nc + nb
if kind == 0 then
  for i = 1, nr do
    if costs[i] > 0 then
      redis.call('HINCRBY', KEYS[i], string.format('%d', buckets[i]), string.format('%d', costs[i]))
      redis.call('PEXPIRE', KEYS[i], windows[i] + math.ceil(windows[i] / 60) + 1000)
      used[i] = used[i] + costs[i]
      if newest[i] == nil or buckets[i] > newest[i] then newest[i] = buckets[i] end
    end
  end
  for i = 1, nc do
    redis.call('ZADD', KEYS[nr + i], now + lease, member)
    redis.call('PEXPIRE', KEYS[nr + i], lease)
  end
  for i = 1, nb do
    local ttl = tonumber(ARGV[a + nc + (i - 1) * 2 + 1])
    if estimate > 0 then redis.call('INCRBY', KEYS[nr + nc + i], string.format('%d', estimate)) end
    if ttl > 0 then redis.call('EXPIRE', KEYS[nr + nc + i], ttl) end
  end
  if track then
    redis.call('ZADD', KEYS[base + 1], now + lease, member)
    redis.call('PEXPIRE', KEYS[base + 1], lease)
  end
end
local out = {kind, index, retry, 0, 0, 0, 0}
if track then
  redis.call('ZREMRANGEBYSCORE', KEYS[base + 1], '-inf', now)
  out[4] = redis.call('ZCARD', KEYS[base + 1])
end
if signals then
  out[5] = tonumber(redis.call('GET', KEYS[base + 2]) or '0')
  out[6] = tonumber(redis.call('GET', KEYS[base + 3]) or '0')
  out[7] = tonumber(redis.call('GET', KEYS[base + 4]) or '0')
end
for i = 1, nr do
  out[#out + 1] = buckets[i]
  out[#out + 1] = used[i]
  if newest[i] == nil then out[#out + 1] = 0 else out[#out + 1] = math.max(0, leaves(newest[i], windows[i]) - now) end
end
for i = 1, nb do out[#out + 1] = spent[i] end
return out
"""

_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nt, nc, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local member, delta, used = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local track, signals = ARGV[7] == '1', ARGV[8] == '1'
local a = 9
for i = 1, nt do
  local window, bucket = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local current = math.floor(now * 60 / window)
  local field = string.format('%d', bucket)
  if delta ~= 0 then
    if bucket >= current - 60 and redis.call('HEXISTS', KEYS[i], field) == 1 then
      redis.call('HINCRBY', KEYS[i], field, string.format('%d', delta))
    elseif delta > 0 then
      redis.call('HINCRBY', KEYS[i], string.format('%d', current), string.format('%d', delta))
      redis.call('PEXPIRE', KEYS[i], window + math.ceil(window / 60) + 1000)
    end
  end
end
for i = 1, nc do redis.call('ZREM', KEYS[nt + i], member) end
local out = {0, 0}
for i = 1, ns do
  local change, ttl = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  out[#out + 1] = redis.call('INCRBY', KEYS[nt + nc + i], string.format('%d', change))
  if ttl > 0 then redis.call('EXPIRE', KEYS[nt + nc + i], ttl) end
end
local base = nt + nc + ns
if track then
  redis.call('ZREM', KEYS[base + 1], member)
  redis.call('ZREMRANGEBYSCORE', KEYS[base + 1], '-inf', now)
  out[1] = redis.call('ZCARD', KEYS[base + 1])
end
if signals then
  if used > 0 then
    out[2] = redis.call('INCRBY', KEYS[base + 2], string.format('%d', used))
    redis.call('EXPIRE', KEYS[base + 2], 172800)
  else
    out[2] = tonumber(redis.call('GET', KEYS[base + 2]) or '0')
  end
end
return out
"""

_RAISE_TO = """
for i = 1, #KEYS do
  local value, ttl = tonumber(ARGV[i * 2 - 1]), tonumber(ARGV[i * 2])
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value > current then
    redis.call('SET', KEYS[i], string.format('%d', value))
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
return #KEYS
"""

_RECONCILE_BATCH = 500


def build_client(url: str, timeout_s: float = 1.0) -> Redis:
    """A client that fails fast (no hidden retries): the failover decides what a failure means."""
    return Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))


class _Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RedisBackend:
    def __init__(
        self,
        client: Redis,
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
        self._admit = _Script(_ADMIT)
        self._settle = _Script(_SETTLE)
        self._raise_to = _Script(_RAISE_TO)
        self._inflight = 0
        self._signals: dict[str, tuple[str, KeySignals]] = {}

    async def start(self) -> None:
        """Load the scripts ahead of the first request (best effort)."""
        try:
            for script in (self._admit, self._settle, self._raise_to):
                await self.client.script_load(script.source)
        except (RedisError, OSError):
            return

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            try:
                return await self._eval(script, keys, args)
            except RedisConnectionError:
                # Connections pooled before a Redis restart each fail once, on their first use
                # after it (measured: one failed call per stale connection — a 503 each under
                # `on_store_error = "closed"`). Drop the idle ones and try once more on a fresh
                # connection; a Redis that is really down refuses that at once. The dead
                # connection never reached the new server, so nothing runs twice there.
                await self.client.connection_pool.disconnect(inuse_connections=False)
                return await self._eval(script, keys, args)
        except ReadOnlyError as exc:
            raise StoreUnavailable(str(exc)) from exc
        except ResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(script.source, len(keys), *keys, *args)

    async def acquire(
        self, plan: Plan, tokens: int, estimate_nusd: int, member: str, periods: PeriodIds, now_ms: int
    ) -> Admission | Refusal:
        p = self.prefix
        signals = self.read_key_signals and plan.key_scope is not None
        keys = [f"{p}w:{r.counter}" for r in plan.rates]
        keys += [f"{p}c:{c.counter}" for c in plan.concurrency]
        reservations = build_reservations(plan, periods)
        keys += [f"{p}s:{counter}" for counter, _ in reservations]
        keys.append(f"{p}inflight")
        if signals:
            keys += self._signal_keys(plan.key_scope, periods)  # type: ignore[arg-type]
        args: list[Any] = [
            len(plan.rates),
            len(plan.concurrency),
            len(reservations),
            member,
            self.lease_ms,
            tokens,
            estimate_nusd,
            "1" if self.track_inflight else "0",
            "1" if signals else "0",
        ]
        for r in plan.rates:
            args += (r.window_ms, r.limit, "1" if r.tokens else "0")
        args += [c.limit for c in plan.concurrency]
        for (_, limit), budget in zip(reservations, plan.budgets, strict=True):
            args += (limit, PERIOD_TTL_S[budget.period])
        reply = await self._run(self._admit, keys, args)
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
        p = self.prefix
        plan = admission.plan
        signals = self.read_key_signals and plan.key_scope is not None
        token_rates = [(i, r) for i, r in enumerate(plan.rates) if r.tokens]
        spend = build_spend_deltas(plan, admission.periods, cost_nusd, admission.estimate_nusd)
        keys = [f"{p}w:{r.counter}" for _, r in token_rates]
        keys += [f"{p}c:{c.counter}" for c in plan.concurrency]
        keys += [f"{p}s:{counter}" for counter, _, _ in spend]
        keys.append(f"{p}inflight")
        if signals:
            keys.append(f"{p}s:{tokens_today_counter(plan.key_scope, admission.periods)}")  # type: ignore[arg-type]
        args: list[Any] = [
            len(token_rates),
            len(plan.concurrency),
            len(spend),
            admission.member,
            tokens_used - admission.tokens,
            tokens_used,
            "1" if self.track_inflight else "0",
            "1" if signals else "0",
        ]
        for i, r in token_rates:
            args += (r.window_ms, admission.buckets[i])
        for _, change, ttl in spend:
            args += (change, ttl)
        reply = await self._run(self._settle, keys, args)
        if self.track_inflight:
            self._inflight = int(reply[0])
        if signals and plan.key_scope is not None:
            # build_spend_deltas lists the key scope first: day, week, month, total.
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
