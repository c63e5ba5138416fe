-- Shared head of every signals script: one key's windowed counters and its circuit state.
-- KEYS[1] window hash ("<bucket>:<slot>" -> count or sum)
-- KEYS[2] state hash (streak, last_failure, cooldown_until, last_probe; server seconds)
-- ARGV[1] bucket width (s), ARGV[2] buckets in the window, ARGV[3] how long an idle key is kept (s)
-- ARGV[#ARGV] (last, after each script's own) the caller's time in s, or '' for the server's.
-- Time is the server's by default; times go back relative to it, so each caller reads them on
-- its own clock. A store opened with clock=caller runs on its callers' clock instead.
local window, state = KEYS[1], KEYS[2]
local width, nbuckets, keep_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(ARGV[#ARGV])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local bucket = math.floor(now / width)
local SLOTS = 14

-- Sum the buckets still inside the window; delete the ones that left it.
local function totals()
  local sums = {}
  for i = 0, SLOTS - 1 do
    sums[i] = 0
  end
  local fields = redis.call('HGETALL', window)
  local stale = {}
  for i = 1, #fields, 2 do
    local b, slot = string.match(fields[i], '^(-?%d+):(%d+)$')
    if tonumber(b) <= bucket - nbuckets then
      stale[#stale + 1] = fields[i]
    else
      local s = tonumber(slot)
      sums[s] = sums[s] + tonumber(fields[i + 1])
    end
  end
  if #stale > 0 then
    redis.call('HDEL', window, unpack(stale))
  end
  return sums
end

local function rel(field)
  local v = redis.call('HGET', state, field)
  if not v then
    return '-'
  end
  return string.format('%.17g', tonumber(v) - now)
end

-- One string of 17 fields: the 14 sums, the streak, then the cooldown and the last failure
-- relative to now ('-' when none). Cheaper to read than an array.
local function reply(sums)
  local out = {}
  for i = 0, SLOTS - 1 do
    out[#out + 1] = string.format('%.17g', sums[i])
  end
  out[#out + 1] = tostring(redis.call('HGET', state, 'streak') or '0')
  out[#out + 1] = rel('cooldown_until')
  out[#out + 1] = rel('last_failure')
  return table.concat(out, ' ')
end

local function keep(key, seconds)
  local ms = math.ceil(seconds * 1000)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end
