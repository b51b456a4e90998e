"""The Lua sources of the Redis backend's scripts (redis.py runs them).

A rate window's hash holds, besides its sub-bucket counts (field = bucket id,
see window.py), three bookkeeping fields that make an admission O(1) instead of
a walk over all 61 sub-buckets:
- `-1`: the sum of every bucket field in the hash;
- `-2`: the frontier: every bucket field has an id >= it;
- `-3`: the newest bucket id written (for the `reset` figure).
An admission reads those and the current bucket (one HMGET), drops only the
buckets between the frontier and the oldest summed one (usually none, or one),
subtracting them from the sum, and writes the bucket and the sum in one HSET.
Only a refusal reads every bucket (to tell when enough will have left). The
hash's expiry is renewed when a bucket newer than all before is written (it
then outlives that bucket, hence every bucket it holds), and a spend counter
gets its expiry when it is created (the ttl counts from the period's start).

The bookkeeping fields have negative ids so that the previous script (which
dropped every field with an id below the oldest summed bucket) ignores and
deletes them: in a fleet mixing both versions, a hash the old script touched
has lost them and is recounted once. A hash is also recounted from all its
fields when it has none (written by the old script, or new), when it was idle
for a whole window, and once every 60 sub-buckets, which bounds any drift (an
old settlement adds to a bucket without moving the sum) to one window.
Numbers are handed to redis.call as Lua numbers: Redis writes integers below
2^53 in plain decimal, the same text as the bucket ids the client sends back.
"""

from __future__ import annotations

ADMIT = """
local call, floor, ceil = redis.call, math.floor, math.ceil
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local nr, nc, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local member, lease = ARGV[4], tonumber(ARGV[5])
local tokens, estimate = tonumber(ARGV[6]), tonumber(ARGV[7])
local track, signals = ARGV[8] == '1', ARGV[9] == '1'
local a = 10
local windows, buckets, costs, used, newest, fronts, stale, held = {}, {}, {}, {}, {}, {}, {}, {}
local kind, index, retry = 0, 0, -1
local function leaves(id, window) return ceil((id + 61) * window / 60) end
local function recount(key, low)
  local raw = call('HGETALL', key)
  local sum, top, dead = 0, nil, {}
  for j = 1, #raw, 2 do
    local id = tonumber(raw[j])
    if id >= low and id >= 0 then
      sum = sum + tonumber(raw[j + 1])
      if top == nil or id > top then top = id end
    elseif id >= 0 then
      dead[#dead + 1] = raw[j]
    end
  end
  if top == nil then
    if #raw > 0 then call('DEL', key) end
    return 0, nil
  end
  for j = 1, #dead, 1000 do call('HDEL', key, unpack(dead, j, math.min(j + 999, #dead))) end
  return sum, top
end
for i = 1, nr do
  local key, window, limit = KEYS[i], tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local cost = 1
  if ARGV[a + 2] == '1' then cost = tokens end
  a = a + 3
  local b = floor(now * 60 / window)
  local low = b - 60
  local meta = call('HMGET', key, '-1', '-2', '-3', b)
  local sum, front, top = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
  held[i] = tonumber(meta[4]) or 0
  if sum == nil or front == nil or top == nil or top < low or floor(front / 60) < floor(low / 60) then
    sum, top = recount(key, low)
    front, stale[i] = low, top ~= nil
  elseif front < low then
    local ids = {}
    for id = front, low - 1 do ids[#ids + 1] = id end
    local values, dead = call('HMGET', key, unpack(ids)), {}
    for j = 1, #ids do
      if values[j] then
        sum = sum - tonumber(values[j])
        dead[#dead + 1] = ids[j]
      end
    end
    if #dead > 0 then call('HDEL', key, unpack(dead)) end
    front, stale[i] = low, true
  end
  windows[i], buckets[i], costs[i], used[i], newest[i], fronts[i] = window, b, cost, sum, top, front
  if sum + cost > limit then
    local wait = -1
    if cost <= limit then
      -- every bucket still in the hash is summed (those that left were dropped above)
      local raw, ids, counts = call('HGETALL', key), {}, {}
      for j = 1, #raw, 2 do
        local id = tonumber(raw[j])
        if id >= 0 then
          ids[#ids + 1] = id
          counts[id] = tonumber(raw[j + 1])
        end
      end
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
  spent[i] = tonumber(call('GET', KEYS[nr + nc + i]) or '0')
  if kind ~= 3 and (spent[i] >= limit or spent[i] + estimate > limit) then
    kind, index, retry = 3, i, -1
  end
end
for i = 1, nc do
  local limit = tonumber(ARGV[a + i - 1])
  call('ZREMRANGEBYSCORE', KEYS[nr + i], '-inf', now)
  if kind == 0 and call('ZCARD', KEYS[nr + i]) + 1 > limit then
    kind, index, retry = 2, i, -1
  end
end
local base = nr + nc + nb
if kind == 0 then
  for i = 1, nr do
    local cost = costs[i]
    if cost > 0 then
      local key, b, renew = KEYS[i], buckets[i], false
      used[i] = used[i] + cost
      if newest[i] == nil or b > newest[i] then newest[i], stale[i], renew = b, true, true end
      if b < fronts[i] then fronts[i], stale[i] = b, true end
      if stale[i] then
        call('HSET', key, b, held[i] + cost, '-1', used[i], '-2', fronts[i], '-3', newest[i])
        stale[i] = false
      else
        call('HSET', key, b, held[i] + cost, '-1', used[i])
      end
      if renew then call('PEXPIRE', key, windows[i] + ceil(windows[i] / 60) + 1000) end
    end
  end
  for i = 1, nc do
    call('ZADD', KEYS[nr + i], now + lease, member)
    call('PEXPIRE', KEYS[nr + i], lease)
  end
  for i = 1, nb do
    local ttl = tonumber(ARGV[a + nc + (i - 1) * 2 + 1])
    if estimate > 0 and call('INCRBY', KEYS[nr + nc + i], ARGV[7]) == estimate and ttl > 0 then
      call('EXPIRE', KEYS[nr + nc + i], ttl)
    end
  end
  if track then
    call('ZADD', KEYS[base + 1], now + lease, member)
    call('PEXPIRE', KEYS[base + 1], lease)
  end
end
for i = 1, nr do
  if stale[i] then call('HSET', KEYS[i], '-1', used[i], '-2', fronts[i], '-3', newest[i]) end
end
local out = {kind, index, retry, 0, 0, 0, 0}
if track then
  call('ZREMRANGEBYSCORE', KEYS[base + 1], '-inf', now)
  out[4] = call('ZCARD', KEYS[base + 1])
end
if signals then
  local got = call('MGET', KEYS[base + 2], KEYS[base + 3], KEYS[base + 4])
  out[5], out[6], out[7] = tonumber(got[1] or '0'), tonumber(got[2] or '0'), tonumber(got[3] or '0')
end
for i = 1, nr do
  out[#out + 1] = buckets[i]
  out[#out + 1] = used[i]
  if newest[i] == nil then out[#out + 1] = 0 else out[#out + 1] = math.max(0, leaves(newest[i], windows[i]) - now) end
end
for i = 1, nb do out[#out + 1] = spent[i] end
return out
"""

SETTLE = """
local call, floor = redis.call, math.floor
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local nt, nc, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local member, delta, used = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local track, signals = ARGV[7] == '1', ARGV[8] == '1'
local a = 9
for i = 1, nt do
  local key, window, field = KEYS[i], tonumber(ARGV[a]), ARGV[a + 1]
  a = a + 2
  if delta ~= 0 then
    local current = floor(now * 60 / window)
    local got = call('HMGET', key, field, '-1', '-2', '-3')
    local sum, front, top = tonumber(got[2]), tonumber(got[3]), tonumber(got[4])
    local meta = sum ~= nil and front ~= nil and top ~= nil
    if got[1] and tonumber(field) >= current - 60 then
      if meta then
        call('HSET', key, field, tonumber(got[1]) + delta, '-1', sum + delta)
      else
        call('HINCRBY', key, field, delta)
      end
    elseif delta > 0 then
      call('HINCRBY', key, current, delta)
      if meta then
        call('HSET', key, '-1', sum + delta, '-2', math.min(front, current), '-3', math.max(top, current))
      end
      call('PEXPIRE', key, window + math.ceil(window / 60) + 1000)
    end
  end
end
for i = 1, nc do call('ZREM', KEYS[nt + i], member) end
local out = {0, 0}
for i = 1, ns do
  local key, change, ttl = KEYS[nt + nc + i], tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local total = call('INCRBY', key, ARGV[a])
  if total == change and ttl > 0 then call('EXPIRE', key, ttl) end
  out[#out + 1] = total
  a = a + 2
end
local base = nt + nc + ns
if track then
  call('ZREM', KEYS[base + 1], member)
  call('ZREMRANGEBYSCORE', KEYS[base + 1], '-inf', now)
  out[1] = call('ZCARD', KEYS[base + 1])
end
if signals then
  if used > 0 then
    out[2] = call('INCRBY', KEYS[base + 2], ARGV[6])
    if out[2] == used then call('EXPIRE', KEYS[base + 2], 172800) end
  else
    out[2] = tonumber(call('GET', KEYS[base + 2]) or '0')
  end
end
return out
"""

RAISE_TO = """
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
