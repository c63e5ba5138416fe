-- ARGV[3] call id, ARGV[4] actual cost (nano-USD), ARGV[5] how long settled ids are kept (ms)
local id, actual, keep_ms = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local had = drop(id)
if not redis.call('ZSCORE', settled, id) then
  if had ~= nil and actual > had then
    overrun = overrun + (actual - had)
  elseif had == nil and redis.call('ZREM', lapsed, id) == 1 then
    -- Its reservation lapsed while the call ran, and others may have taken the money: what
    -- this charge takes past the money free now is an overrun too.
    local free = math.max(0, limit - spent - reserved)
    overrun = overrun + math.max(0, actual - free)
  end
  spent = spent + actual
  redis.call('ZADD', settled, now_ms, id)
  redis.call('HSET', charged, id, fmt(actual))
  local forgotten = redis.call('ZRANGEBYSCORE', settled, '-inf', now_ms - keep_ms)
  -- (In slices: Lua's unpack takes at most 8000 values, and a script that fails halfway has
  -- done its writes so far.)
  for i = 1, #forgotten, 1000 do
    redis.call('HDEL', charged, unpack(forgotten, i, math.min(i + 999, #forgotten)))
  end
  if #forgotten > 0 then
    redis.call('ZREMRANGEBYSCORE', settled, '-inf', now_ms - keep_ms)
  end
end
return reply(1)
