-- Worker registrations: a sorted set of worker ids scored by the time their heartbeat
-- expires, and a hash of their WorkerInfo as JSON.
-- ARGV: prefix, op, then:
--   beat:   worker_id, expires_at, info_json
--   forget: worker_id
--   list:   now  -> {info_json, ...} of live workers (expired ones are deleted first)
local p, op = ARGV[1], ARGV[2]
local alive, info = p .. 'workers', p .. 'worker-info'
if op == 'beat' then
  redis.call('ZADD', alive, ARGV[4], ARGV[3])
  redis.call('HSET', info, ARGV[3], ARGV[5])
  return 1
elseif op == 'forget' then
  redis.call('ZREM', alive, ARGV[3])
  redis.call('HDEL', info, ARGV[3])
  return 1
end
local now = ARGV[3]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
  redis.call('ZREM', alive, id)
  redis.call('HDEL', info, id)
end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', alive, 0, -1)) do
  local json = redis.call('HGET', info, id)
  if json then out[#out + 1] = json end
end
return out
