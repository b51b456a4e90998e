"""The Redis backend's Lua scripts (redis_lua.py), run directly against a real Redis.

Most tests hand the scripts their clock in two extra trailing ARGV values instead
of Redis `TIME` (see `with_clock`): the scripts index ARGV from the front, so the
extra values change nothing else, and a sequence can step through sub-buckets,
60-bucket blocks and idle windows without sleeping. The previous scripts, which
walked every sub-bucket of every window on each call, are kept here verbatim as
the reference the new ones must agree with reply for reply, bucket for bucket.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from llmgate.throttle.redis_lua import ADMIT, SETTLE

from .conftest import REDIS_URL

# A multiple of 60 s: for a 60 s window its bucket id is a multiple of 60, the
# start of a block (the scripts recount a hash whenever the oldest summed bucket
# enters a new block of 60).
START_MS = 1_790_000_040_000
SUM, FRONT, NEWEST = -1, -2, -3

OLD_ADMIT = """
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

OLD_SETTLE = """
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


def with_clock(source: str) -> str:
    """The script reading now from its last two ARGV (seconds, microseconds) instead of Redis TIME."""
    replaced, count = re.subn(r"(?:redis\.)?call\('TIME'\)", "{ARGV[#ARGV - 1], ARGV[#ARGV]}", source)
    assert count == 1, "the script no longer reads TIME in one place: update with_clock"
    return replaced


@dataclass(frozen=True)
class Rate:
    window_ms: int
    limit: int
    tokens: bool = False


@dataclass(frozen=True)
class Budget:
    limit: int
    ttl_s: int


@dataclass
class Reply:
    raw: list[int]
    n: int

    @property
    def kind(self) -> int:
        return self.raw[0]

    @property
    def retry(self) -> int:
        return self.raw[2]

    @property
    def buckets(self) -> list[int]:
        return self.raw[7 : 7 + 3 * self.n : 3]

    @property
    def used(self) -> list[int]:
        return self.raw[8 : 8 + 3 * self.n : 3]

    @property
    def reset(self) -> list[int]:
        return self.raw[9 : 9 + 3 * self.n : 3]


class Scripts:
    """One version of the admission and settlement scripts over the keys under one prefix.

    Keys and arguments are laid out as RedisBackend.acquire / release lay them out.
    """

    def __init__(self, client: Redis, prefix: str, admit: str = ADMIT, settle: str = SETTLE, clock: bool = True):
        self.client = client
        self.prefix = prefix
        self.admit_source = with_clock(admit) if clock else admit
        self.settle_source = with_clock(settle) if clock else settle
        self.clock = clock

    def window_key(self, i: int) -> str:
        return f"{self.prefix}w:{i}"

    def _now(self, now_ms: int | None) -> list[int]:
        if not self.clock:
            assert now_ms is None
            return []
        assert now_ms is not None
        return [now_ms // 1000, now_ms % 1000 * 1000]

    async def admit(
        self,
        now_ms: int | None,
        rates: Sequence[Rate],
        tokens: int = 0,
        *,
        member: str = "m",
        concurrency: Sequence[int] = (),
        budgets: Sequence[Budget] = (),
        estimate: int = 0,
        track: bool = False,
        signals: bool = False,
    ) -> Reply:
        p = self.prefix
        keys = [self.window_key(i) for i in range(len(rates))]
        keys += [f"{p}c:{i}" for i in range(len(concurrency))]
        keys += [f"{p}s:b{i}" for i in range(len(budgets))]
        keys.append(f"{p}inflight")
        if signals:
            keys += [f"{p}s:tok", f"{p}s:b0", f"{p}s:month"]
        args: list[Any] = [len(rates), len(concurrency), len(budgets), member, 900_000, tokens, estimate]
        args += ["1" if track else "0", "1" if signals else "0"]
        for r in rates:
            args += [r.window_ms, r.limit, "1" if r.tokens else "0"]
        args += list(concurrency)
        for b in budgets:
            args += [b.limit, b.ttl_s]
        raw = await self.client.eval(self.admit_source, len(keys), *keys, *args, *self._now(now_ms))
        return Reply([int(v) for v in raw], len(rates))

    async def settle(
        self,
        now_ms: int | None,
        rates: Sequence[Rate],
        admitted: Reply,
        reserved: int,
        used: int,
        *,
        member: str = "m",
        concurrency: int = 0,
        spend: Sequence[tuple[str, int, int]] = (),
        track: bool = False,
        signals: bool = False,
    ) -> list[int]:
        p = self.prefix
        token_rates = [i for i, r in enumerate(rates) if r.tokens]
        keys = [self.window_key(i) for i in token_rates]
        keys += [f"{p}c:{i}" for i in range(concurrency)]
        keys += [f"{p}s:{name}" for name, _, _ in spend]
        keys.append(f"{p}inflight")
        if signals:
            keys.append(f"{p}s:tok")
        args: list[Any] = [len(token_rates), concurrency, len(spend), member, used - reserved, used]
        args += ["1" if track else "0", "1" if signals else "0"]
        for i in token_rates:
            args += [rates[i].window_ms, admitted.buckets[i]]
        for _, change, ttl in spend:
            args += [change, ttl]
        raw = await self.client.eval(self.settle_source, len(keys), *keys, *args, *self._now(now_ms))
        return [int(v) for v in raw]

    async def fields(self, i: int) -> dict[int, int]:
        raw = await self.client.hgetall(self.window_key(i))
        return {int(k): int(v) for k, v in raw.items()}


def buckets_of(fields: dict[int, int]) -> dict[int, int]:
    return {k: v for k, v in fields.items() if k >= 0}


async def check_bookkeeping(scripts: Scripts, i: int) -> dict[int, int]:
    """The window's sum, frontier and newest id agree with its buckets; the hash always expires."""
    key = scripts.window_key(i)
    fields = await scripts.fields(i)
    buckets = buckets_of(fields)
    if fields:
        assert await scripts.client.pttl(key) > 0, "a window hash without an expiry"
    if SUM in fields:
        assert fields[SUM] == sum(buckets.values()), fields
        if buckets:
            assert min(buckets) >= fields[FRONT], fields
            assert max(buckets) == fields[NEWEST], fields
    return buckets


def leaves(bucket: int, window_ms: int) -> int:
    return math.ceil((bucket + 61) * window_ms / 60)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(client: Redis) -> AsyncIterator[str]:
    """A unique key prefix; every key under it is deleted afterwards."""
    prefix = f"llmgate-test-lua-{uuid.uuid4().hex[:10]}:"
    yield prefix
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


# --- the new scripts against the previous ones, over random sequences ---------------------------

# Mostly forward; Redis TIME may also step back (a clock adjusted, a failover to another host).
STEPS_MS = [0, 0, 1, 17, 400, 1_000, 1_001, 7_000, 30_000, 59_999, 61_000, 125_000, -1_000, -90_000]

operations = st.lists(
    st.tuples(
        st.sampled_from(STEPS_MS),
        st.sampled_from(["admit", "admit", "settle"]),
        st.integers(0, 40),  # tokens reserved, or the index of the admission to settle
        st.integers(0, 60),  # tokens used at settlement
        st.booleans(),  # run by the previous script (only with `legacy_admissions`)
    ),
    min_size=1,
    max_size=60,
)
limits = st.tuples(st.integers(0, 12), st.integers(0, 150), st.integers(1, 4))


async def run_against_reference(
    ops: list[tuple[int, str, int, int, bool]], limit: tuple[int, int, int], legacy_admissions: bool
) -> None:
    """Play `ops` on the new scripts and on the previous ones (each on its own keys): same replies, same buckets.

    With `legacy_admissions`, some admissions on the new scripts' keys are run by the previous
    script instead, as in a fleet being upgraded.
    """
    assert REDIS_URL is not None
    client = Redis.from_url(REDIS_URL)
    run = uuid.uuid4().hex[:10]
    new = Scripts(client, f"llmgate-test-lua-{run}-new:")
    old = Scripts(client, f"llmgate-test-lua-{run}-old:", OLD_ADMIT, OLD_SETTLE)
    legacy = Scripts(client, new.prefix, OLD_ADMIT, OLD_SETTLE)
    rates = [Rate(60_000, limit[0]), Rate(60_000, limit[1], tokens=True), Rate(1_000, limit[2])]
    now = START_MS
    held: list[tuple[Reply, int]] = []
    try:
        for step, op, amount, used, by_legacy in ops:
            now += step
            if op == "admit":
                subject = legacy if legacy_admissions and by_legacy else new
                got = await subject.admit(now, rates, amount)
                want = await old.admit(now, rates, amount)
                assert got.raw == want.raw
                if got.kind == 0:
                    held.append((got, amount))
            elif held:
                admitted, reserved = held.pop(amount % len(held))
                got_settle = await new.settle(now, rates, admitted, reserved, used)
                assert got_settle == await old.settle(now, rates, admitted, reserved, used)
            for i in range(len(rates)):
                assert await check_bookkeeping(new, i) == await old.fields(i)
    finally:
        keys = [k async for k in client.scan_iter(match=f"llmgate-test-lua-{run}-*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, limit=limits)
async def test_admissions_and_settlements_match_the_previous_scripts(redis_url, ops, limit):
    await run_against_reference(ops, limit, legacy_admissions=False)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, limit=limits)
async def test_a_fleet_mixing_both_admission_scripts_stays_exact(redis_url, ops, limit):
    await run_against_reference(ops, limit, legacy_admissions=True)


# --- the window's life, step by step ---------------------------------------------------------------


async def test_buckets_leave_the_window_as_time_passes(client, prefix):
    scripts = Scripts(client, prefix)
    rates = [Rate(60_000, 100, tokens=True)]
    first = await scripts.admit(START_MS, rates, 30)
    b0 = first.buckets[0]
    assert first.used == [30]
    assert first.reset == [leaves(b0, 60_000) - START_MS]
    second = await scripts.admit(START_MS + 20_000, rates, 50)
    assert second.used == [80]
    refused = await scripts.admit(START_MS + 40_000, rates, 40)
    assert (refused.kind, refused.used) == (1, [80])
    assert refused.retry == leaves(b0, 60_000) - (START_MS + 40_000)  # the first 30 free enough
    assert refused.reset == [leaves(b0 + 20, 60_000) - (START_MS + 40_000)]
    assert await scripts.fields(0) == {b0: 30, b0 + 20: 50, SUM: 80, FRONT: b0 - 20, NEWEST: b0 + 20}
    # At b0 + 60 the first bucket is still summed; one bucket later it has left.
    still = await scripts.admit(START_MS + 60_000, rates, 0)
    assert still.used == [80]
    after = await scripts.admit(START_MS + 61_000, rates, 40)
    assert (after.kind, after.used) == (0, [90])
    assert await scripts.fields(0) == {b0 + 20: 50, b0 + 61: 40, SUM: 90, FRONT: b0 + 1, NEWEST: b0 + 61}


async def test_a_window_idle_for_longer_than_its_length_starts_from_zero(client, prefix):
    scripts = Scripts(client, prefix)
    rates = [Rate(60_000, 5)]
    for k in range(5):
        await scripts.admit(START_MS + k * 1_000, rates)
    assert (await scripts.admit(START_MS + 5_000, rates)).kind == 1
    later = START_MS + 4_000 + 61_001  # the newest bucket has left too
    reply = await scripts.admit(later, rates)
    b = reply.buckets[0]
    assert (reply.kind, reply.used, reply.reset) == (0, [1], [leaves(b, 60_000) - later])
    assert await scripts.fields(0) == {b: 1, SUM: 1, FRONT: b - 60, NEWEST: b}
    # Idle with nothing admitted: the hash goes away, and a refusal of a request that can
    # never pass leaves nothing behind.
    gone = await scripts.admit(later + 200_000, [Rate(60_000, 0)], 0)
    assert (gone.kind, gone.used, gone.reset, gone.retry) == (1, [0], [0], -1)
    assert await client.exists(scripts.window_key(0)) == 0


async def test_settlements_move_the_sum_with_their_bucket_both_ways(client, prefix):
    scripts = Scripts(client, prefix)
    rates = [Rate(60_000, 1_000), Rate(60_000, 200, tokens=True)]
    first = await scripts.admit(START_MS, rates, 60)
    b0 = first.buckets[1]
    await scripts.settle(START_MS + 3_000, rates, first, 60, 25)  # a refund of 35
    assert await check_bookkeeping(scripts, 1) == {b0: 25}
    assert (await scripts.fields(1))[SUM] == 25
    second = await scripts.admit(START_MS + 5_000, rates, 70)
    assert second.used == [2, 95]
    await scripts.settle(START_MS + 6_000, rates, second, 70, 80)  # a charge of 10 on top
    assert await check_bookkeeping(scripts, 1) == {b0: 25, b0 + 5: 80}
    assert (await scripts.admit(START_MS + 7_000, rates, 0)).used == [3, 105]
    # A reservation whose bucket has left: a refund is moot, a charge lands in the current bucket.
    late = START_MS + 62_000
    await scripts.settle(late, rates, first, 60, 0)
    assert await check_bookkeeping(scripts, 1) == {b0: 25, b0 + 5: 80}
    await scripts.settle(late, rates, first, 60, 75)
    assert await check_bookkeeping(scripts, 1) == {b0: 25, b0 + 5: 80, b0 + 62: 15}
    assert (await scripts.fields(1))[NEWEST] == b0 + 62
    assert (await scripts.admit(late, rates, 0)).used == [3, 95]  # b0 has left: 80 + 15
    assert await check_bookkeeping(scripts, 1) == {b0 + 5: 80, b0 + 62: 15}
    assert (await scripts.admit(START_MS + 7_000, rates, 0)).used == [4, 95]  # a clock that stepped back


async def test_a_hash_in_the_previous_layout_is_read_exactly_and_upgraded(client, prefix):
    subject = Scripts(client, prefix + "a:", OLD_ADMIT, OLD_SETTLE)
    reference = Scripts(client, prefix + "b:", OLD_ADMIT, OLD_SETTLE)
    rates = [Rate(60_000, 10_000), Rate(60_000, 3_000, tokens=True)]
    for k in range(0, 90_000, 1_500):  # the previous scripts fill a whole window (and expire some)
        for scripts in (subject, reference):
            admitted = await scripts.admit(START_MS + k, rates, 40 + k % 7)
            await scripts.settle(START_MS + k + 700, rates, admitted, 40 + k % 7, 30)
    assert SUM not in await subject.fields(1) and len(await subject.fields(1)) == 41
    upgraded = Scripts(client, subject.prefix)
    now = START_MS + 91_000
    kinds = []
    for tokens in (20, 2_000, 1):  # admitted, refused (a wait read from every bucket), admitted
        got = await upgraded.admit(now, rates, tokens)
        assert got.raw == (await reference.admit(now, rates, tokens)).raw
        kinds.append((got.kind, got.retry > 0))
    assert kinds == [(0, False), (1, True), (0, False)]
    assert buckets_of(await upgraded.fields(1)) == await reference.fields(1)
    assert await check_bookkeeping(upgraded, 1) and SUM in await upgraded.fields(1)


async def test_a_settlement_by_the_previous_script_is_counted_within_one_window(client, prefix):
    """The drift an old process's settlement can leave in the sum is bounded by the recount every 60 buckets."""
    new = Scripts(client, prefix)
    old = Scripts(client, prefix, OLD_ADMIT, OLD_SETTLE)
    rates = [Rate(60_000, 100, tokens=True)]
    admitted = await new.admit(START_MS, rates, 50)
    await old.settle(START_MS + 1_000, rates, admitted, 50, 10)  # refunds 40 without moving the sum
    for k in range(2, 60):
        await new.admit(START_MS + k * 1_000, rates, 0)
    healed = await new.admit(START_MS + 60_000, rates, 1)  # b0 is still summed: 10 + 1
    assert healed.used == [11]
    assert await check_bookkeeping(new, 0)


async def test_refusal_waits_match_the_previous_script(client, prefix):
    new = Scripts(client, prefix + "a:")
    old = Scripts(client, prefix + "b:", OLD_ADMIT, OLD_SETTLE)
    rates = [Rate(60_000, 20), Rate(60_000, 500, tokens=True), Rate(1_000, 3)]
    for k, tokens in enumerate([100, 50, 0, 200, 10, 90, 40]):
        for scripts in (new, old):
            await scripts.admit(START_MS + k * 4_321, rates, tokens)
    now = START_MS + 40_000
    for tokens in (60, 151, 400, 501, 11):  # each needs a different bucket to leave; 501 never fits
        got = await new.admit(now, rates, tokens)
        assert got.raw == (await old.admit(now, rates, tokens)).raw
        assert got.kind == 1
    burst = [await s.admit(now + 1, rates, 0) for s in (new, old, new, old, new, old, new, old)]
    assert burst[6].raw == burst[7].raw and burst[6].kind == 1 and burst[6].retry > 0  # rps 3 in one second


async def test_concurrency_budgets_inflight_and_signals_match_the_previous_script(client, prefix):
    new = Scripts(client, prefix + "a:")
    old = Scripts(client, prefix + "b:", OLD_ADMIT, OLD_SETTLE)
    rates = [Rate(60_000, 50, tokens=True)]
    budgets = [Budget(1_000, 3 * 86400), Budget(5_000, 0)]
    for scripts in (new, old):
        await client.set(f"{scripts.prefix}s:month", 900)
    options: dict[str, Any] = {"concurrency": [2], "budgets": budgets, "track": True, "signals": True}
    admitted: list[Reply] = []
    for k in range(5):
        now = START_MS + k * 100
        got = await new.admit(now, rates, 5, member=f"r{k}", estimate=300, **options)
        assert got.raw == (await old.admit(now, rates, 5, member=f"r{k}", estimate=300, **options)).raw
        if got.kind == 0:
            admitted.append(got)
    assert [r.kind for r in admitted] == [0, 0]  # then concurrency (2), then the budget once one settles
    spend = [("b0", 120 - 300, 3 * 86400), ("total", 120, 0), ("fresh", 120, 86400)]
    for scripts in (new, old):
        out = await scripts.settle(
            START_MS + 900, rates, admitted[0], 5, 3, member="r0", concurrency=1, spend=spend, track=True, signals=True
        )
        assert out == [1, 3, 420, 120, 120]
    for k in range(5, 8):
        now = START_MS + k * 100
        got = await new.admit(now, rates, 5, member=f"r{k}", estimate=300, **options)
        assert got.raw == (await old.admit(now, rates, 5, member=f"r{k}", estimate=300, **options)).raw
    # A counter gets its expiry when it is created (the ttl counts from the period's start).
    p = new.prefix
    assert 0 < await client.ttl(f"{p}s:b0") <= 3 * 86400
    assert await client.ttl(f"{p}s:b1") == -1  # ttl 0: kept
    assert await client.ttl(f"{p}s:total") == -1
    assert 0 < await client.ttl(f"{p}s:fresh") <= 86400
    assert 0 < await client.ttl(f"{p}s:tok") <= 172800
    spent_today = int(await client.get(f"{p}s:b0"))
    assert got.raw[4:7] == [3, spent_today, 900]  # the signals: tokens today, spend today (b0), this month


async def test_a_clock_stepping_back_past_the_frontier_keeps_the_bookkeeping(client, prefix):
    new = Scripts(client, prefix + "a:")
    old = Scripts(client, prefix + "b:", OLD_ADMIT, OLD_SETTLE)
    rates = [Rate(60_000, 1_000, tokens=True)]
    replies = []
    for now, tokens in ((START_MS, 30), (START_MS + 200_000, 40), (START_MS + 5_000, 20)):
        replies.append(await new.admit(now, rates, tokens))
        assert replies[-1].raw == (await old.admit(now, rates, tokens)).raw
        assert await check_bookkeeping(new, 0) == await old.fields(0)
    first = replies[0]  # its bucket has been dropped: a charge goes to the current (earlier) bucket
    for scripts in (new, old):
        await scripts.settle(START_MS - 120_000, rates, first, 30, 45)
    assert await check_bookkeeping(new, 0) == await old.fields(0)
    assert min(await old.fields(0)) == first.buckets[0] - 120
    for now in (START_MS - 100_000, START_MS + 1_000, START_MS + 260_000, START_MS + 400_000):
        assert (await new.admit(now, rates, 1)).raw == (await old.admit(now, rates, 1)).raw
        assert await check_bookkeeping(new, 0) == await old.fields(0)


# --- the production scripts on Redis TIME ------------------------------------------------------------


async def test_the_scripts_on_the_redis_clock_expire_buckets_and_settle(client, prefix):
    scripts = Scripts(client, prefix, clock=False)
    rates = [Rate(600, 3), Rate(600, 100, tokens=True)]  # 10 ms sub-buckets
    held = [await scripts.admit(None, rates, 30) for _ in range(3)]
    assert [r.kind for r in held] == [0, 0, 0]
    refused = await scripts.admit(None, rates, 1)
    assert refused.kind == 1 and 0 <= refused.retry <= 610
    await scripts.settle(None, rates, held[0], 30, 5)
    assert sum((await check_bookkeeping(scripts, 1)).values()) == 65
    await asyncio.sleep((refused.retry + 30) / 1000)
    assert (await scripts.admit(None, rates, 1)).kind == 0
    ttl = await client.pttl(scripts.window_key(0))
    assert 0 < ttl <= 600 + 10 + 1000
    await asyncio.sleep(0.7)  # longer than the window: everything has left
    fresh = await scripts.admit(None, rates, 2)
    assert (fresh.kind, fresh.used) == (0, [1, 2])
    for i in range(2):
        await check_bookkeeping(scripts, i)


# --- the work an admission does ------------------------------------------------------------------------


async def test_an_admission_reads_only_the_bookkeeping_fields_of_a_full_window(throwaway_redis):
    client = Redis.from_url(throwaway_redis.url)
    scripts = Scripts(client, "work:")
    rates = [Rate(60_000, 10**9), Rate(60_000, 10**9, tokens=True)]
    for k in range(61):  # a full window: 61 buckets each
        admitted = await scripts.admit(START_MS + k * 1_000, rates, 20)
        await scripts.settle(START_MS + k * 1_000 + 10, rates, admitted, 20, 12)
    assert len(buckets_of(await scripts.fields(1))) == 61
    await client.config_resetstat()
    now = START_MS + 61_500
    for k in range(40):  # the oldest summed bucket stays in one block of 60: no walk over the buckets
        admitted = await scripts.admit(now + k * 1_000, rates, 20)
        await scripts.settle(now + k * 1_000 + 10, rates, admitted, 20, 12)
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in (await client.info("commandstats")).items()}
    assert "hgetall" not in calls
    assert calls["hdel"] == 2 * 40  # one bucket leaves per window and second
    await client.aclose()
