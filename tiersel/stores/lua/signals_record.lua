-- ARGV[4] outcome slot, ARGV[5] ttft (s, or -1), ARGV[6] output tokens/s (or -1),
-- ARGV[7] retry-after (s, or -1), ARGV[8] 1 if the outcome is a failure
local slot, ttft, tps = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local retry_after, failed = tonumber(ARGV[7]), ARGV[8] == '1'
local prefix = tostring(bucket) .. ':'
redis.call('HINCRBY', window, prefix .. '0', 1)
redis.call('HINCRBY', window, prefix .. slot, 1)
if ttft >= 0 then
  redis.call('HINCRBYFLOAT', window, prefix .. '6', ttft)
  redis.call('HINCRBY', window, prefix .. '7', 1)
end
if tps > 0 then
  redis.call('HINCRBYFLOAT', window, prefix .. '8', tps)
  redis.call('HINCRBY', window, prefix .. '9', 1)
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
