-- ARGV[4] outcome slot, ARGV[5] ttft (s, or -1), ARGV[6] output tokens/s (or -1),
-- ARGV[7] retry-after (s, or -1), ARGV[8] 1 if the outcome is a failure
local slot, ttft, tps = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local retry_after, failed = tonumber(ARGV[7]), ARGV[8] == '1'
local prefix = tostring(bucket) .. ':'
redis.call('HINCRBY', window, prefix .. '0', 1)
redis.call('HINCRBY', window, prefix .. slot, 1)
-- A timing adds to its sum and count, and its log to the sums of logs and squared logs.
local function timing(value, raw, sum_slot, n_slot, log_slot, sq_slot)
  local log = math.log(value)
  redis.call('HINCRBYFLOAT', window, prefix .. sum_slot, raw)
  redis.call('HINCRBY', window, prefix .. n_slot, 1)
  redis.call('HINCRBYFLOAT', window, prefix .. log_slot, string.format('%.17g', log))
  redis.call('HINCRBYFLOAT', window, prefix .. sq_slot, string.format('%.17g', log * log))
end
if ttft > 0 then
  timing(ttft, ARGV[5], '6', '7', '10', '11')
end
if tps > 0 then
  timing(tps, ARGV[6], '8', '9', '12', '13')
end
if failed then
  redis.call('HINCRBY', state, 'streak', 1)
  redis.call('HSET', state, 'last_failure', string.format('%.17g', now))
else
  redis.call('HSET', state, 'streak', 0)
end
local until_s = now
if retry_after > 0 then
  local current = tonumber(redis.call('HGET', state, 'cooldown_until') or '0')
  until_s = math.max(current, now + retry_after)
  redis.call('HSET', state, 'cooldown_until', string.format('%.17g', until_s))
end
keep(window, width * (nbuckets + 1))
keep(state, keep_s + (until_s - now))
return reply(totals())
