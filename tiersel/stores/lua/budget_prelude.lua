-- Shared head of every budget script: one budget, its reservations and settled ids.
-- KEYS[1] state hash (limit, spent, reserved, overrun; integer nano-USD)
-- KEYS[2] held hash (call id -> nano-USD held)
-- KEYS[3] expiry zset (call id -> expiry, server ms)
-- KEYS[4] settled zset (call id -> when settled, server ms)
-- KEYS[5] lapsed zset (call id -> when its reservation lapsed, freed at its expiry, server ms)
-- KEYS[6] charged hash (settled call id -> nano-USD charged; kept as long as the settled zset)
-- ARGV[1] the limit the caller expects (nano-USD); the first caller sets it.
-- ARGV[2] what an expired reservation becomes: 'charge' (charged in full) or 'release' (freed).
-- ARGV[#ARGV] (last, after each script's own) the caller's time in ms, or '' for the server's.
-- Time is the server's by default, so every worker on every machine sees the same expiries; a
-- store opened with clock=caller runs on its callers' clock (one clock for all: tests, replays).
local state, held, expiry, settled, lapsed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local charged = KEYS[6]
local now_ms = tonumber(ARGV[#ARGV])
if not now_ms then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local limit = tonumber(ARGV[1])
local stored = redis.call('HGET', state, 'limit')
if not stored then
  redis.call('HSET', state, 'limit', ARGV[1])
elseif tonumber(stored) ~= limit then
  return '-1 ' .. stored .. ' 0 0 0'
end
local spent = tonumber(redis.call('HGET', state, 'spent') or '0')
local reserved = tonumber(redis.call('HGET', state, 'reserved') or '0')
-- Charged past reservations: what providers billed beyond the bounds reserved for them.
local overrun = tonumber(redis.call('HGET', state, 'overrun') or '0')

local function fmt(x)
  return string.format('%.0f', x)
end

-- Drop one reservation; return what it held (0 if none).
-- The amount held for `id` (nil when none was: a reservation of 0 is still one), dropped.
local function drop(id)
  local amount = redis.call('HGET', held, id)
  if not amount then
    return nil
  end
  redis.call('HDEL', held, id)
  redis.call('ZREM', expiry, id)
  reserved = reserved - tonumber(amount)
  return tonumber(amount)
end

-- Reservations past their expiry no longer count: a worker that died holding one pins nothing.
local charge_expired = ARGV[2] == 'charge'
local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now_ms)
for _, id in ipairs(gone) do
  local amount = drop(id) or 0
  if charge_expired and not redis.call('ZSCORE', settled, id) then
    spent = spent + amount
    redis.call('ZADD', settled, now_ms, id)
    redis.call('HSET', charged, id, fmt(amount))
  else
    redis.call('ZADD', lapsed, now_ms, id)
  end
end
if #gone > 0 then
  -- A week is more than any call outlives its reservation by.
  redis.call('ZREMRANGEBYSCORE', lapsed, '-inf', now_ms - 604800000)
end

-- One string, "ok limit spent reserved overrun" (ok: 1 done, 0 did not fit): cheaper to read
-- than an array.
local function reply(ok)
  redis.call('HSET', state, 'spent', fmt(spent), 'reserved', fmt(reserved), 'overrun', fmt(overrun))
  return ok .. ' ' .. fmt(limit) .. ' ' .. fmt(spent) .. ' ' .. fmt(reserved) .. ' ' .. fmt(overrun)
end
