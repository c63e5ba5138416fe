-- ARGV[3] call id, ARGV[4] amount (nano-USD), ARGV[5] ttl in ms (0: no expiry)
local id, amount, ttl_ms = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local previous = tonumber(redis.call('HGET', held, id) or '0')
if spent + reserved - previous + amount > limit then
  return reply(0)
end
redis.call('HSET', held, id, fmt(amount))
if ttl_ms > 0 then
  redis.call('ZADD', expiry, now_ms + ttl_ms, id)
else
  redis.call('ZREM', expiry, id)
end
reserved = reserved - previous + amount
return reply(1)
