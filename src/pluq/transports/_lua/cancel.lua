-- Remove a ready or delayed message by id (a revoke).
-- ARGV: prefix, id, now, remember ('1': the id stays known to publish, like an ack)
-- Returns 1 if removed, 0 if no such message waits (unknown, leased or dead).
local p, id, now = ARGV[1], ARGV[2], ARGV[3]
local m = p .. 'msg:' .. id
local f = redis.call('HMGET', m, 'state', 'queue', 'dkey')
local state, q = f[1], f[2]
if state == 'ready' then
  redis.call('LREM', p .. 'ready:' .. q, 1, id)
elseif state == 'delayed' then
  redis.call('ZREM', p .. 'delayed:' .. q, f[3])
else
  return 0
end
redis.call('DEL', m)
if ARGV[4] == '1' then redis.call('ZADD', p .. 'done', now, id) end
return 1
