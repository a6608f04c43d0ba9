-- Act on a leased message: ack, release, dead (letter) or extend.
-- ARGV: prefix, op, id, lease_id, now, then per op:
--   ack:     dedupe_floor, remember ('1' to keep the id known until dedupe_floor passes it)
--   release: not_before ('' = ready now), has_body ('1'/'0'), body
--   dead:    reason, has_body, body
--   extend:  lease_deadline
-- Returns 1, or 0 when lease_id is not the message's current lease (LeaseLost).
local p, op, id, lease_id, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local m = p .. 'msg:' .. id
local cur = redis.call('HMGET', m, 'lease_id', 'state', 'queue')
if cur[1] ~= lease_id then return 0 end
local state, q = cur[2], cur[3]
local ready, lq = p .. 'ready:' .. q, p .. 'leased:' .. q

local function signal()
  local s = p .. 'signal:' .. q
  if redis.call('LLEN', s) == 0 then redis.call('RPUSH', s, '1') end
end

if op == 'extend' then
  if state ~= 'leased' then
    -- Its lease expired and it went back to the ready list, but nobody took it: take it back.
    redis.call('LREM', ready, 1, id)
    redis.call('HSET', m, 'state', 'leased')
  end
  redis.call('ZADD', lq, ARGV[6], id)
  return 1
end

if state == 'leased' then
  redis.call('ZREM', lq, id)
else
  redis.call('LREM', ready, 1, id)
end

if op == 'ack' then
  redis.call('DEL', m)
  if ARGV[7] == '1' then
    local done = p .. 'done'
    redis.call('ZADD', done, now, id)
    redis.call('ZREMRANGEBYSCORE', done, '-inf', ARGV[6])
  end
  return 1
end

redis.call('HDEL', m, 'lease_id')
if op == 'release' then
  local nb = ARGV[6]
  if ARGV[7] == '1' then redis.call('HSET', m, 'body', ARGV[8]) end
  if nb ~= '' and tonumber(nb) > tonumber(now) then
    local seq = tostring(redis.call('INCR', p .. 'seq'))
    local member = string.rep('0', 16 - #seq) .. seq .. ':' .. id
    local dq = p .. 'delayed:' .. q
    redis.call('HSET', m, 'state', 'delayed', 'dkey', member)
    redis.call('ZADD', dq, nb, member)
    if redis.call('ZRANGE', dq, 0, 0)[1] == member then signal() end
  else
    redis.call('HSET', m, 'state', 'ready')
    redis.call('RPUSH', ready, id)
    signal()
  end
  return 1
end

-- op == 'dead': ordered by a sequence number, so that dead letters list oldest first.
if ARGV[7] == '1' then redis.call('HSET', m, 'body', ARGV[8]) end
redis.call('HSET', m, 'state', 'dead', 'reason', ARGV[6], 'dead_at', now)
redis.call('ZADD', p .. 'dead:' .. q, redis.call('INCR', p .. 'seq'), id)
return 1
