-- ARGV[4] the least time between two probes (s). 1: this caller may probe; 0: another did lately.
local interval = tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', state, 'last_probe') or '-1e300')
if now - last < interval then
  return 0
end
redis.call('HSET', state, 'last_probe', string.format('%.17g', now))
keep(state, keep_s)
return 1
