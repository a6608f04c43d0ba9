-- Count messages per queue without changing anything.
-- ARGV: prefix, now, queue... (no queue: every queue in the `queues` set)
-- Returns {queue, ready, delayed, leased, dead, ...}. Due delayed messages and expired
-- leases count as ready, as the next reserve would make them.
local p, now = ARGV[1], ARGV[2]
local queues = {}
if #ARGV > 2 then
  for i = 3, #ARGV do queues[#queues + 1] = ARGV[i] end
else
  queues = redis.call('SMEMBERS', p .. 'queues')
end
local out = {}
for _, q in ipairs(queues) do
  local dq, lq = p .. 'delayed:' .. q, p .. 'leased:' .. q
  local due = redis.call('ZCOUNT', dq, '-inf', now)
  local expired = redis.call('ZCOUNT', lq, '-inf', now)
  out[#out + 1] = q
  out[#out + 1] = redis.call('LLEN', p .. 'ready:' .. q) + due + expired
  out[#out + 1] = redis.call('ZCARD', dq) - due
  out[#out + 1] = redis.call('ZCARD', lq) - expired
  out[#out + 1] = redis.call('ZCARD', p .. 'dead:' .. q)
end
return out
