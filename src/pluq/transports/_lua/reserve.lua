-- Lease up to `limit` ready messages from the queues, in the order given.
-- ARGV: prefix, now, lease_deadline, limit, lease_base, queue...
-- First moves due delayed messages and expired leases of these queues to their ready lists.
-- Returns {next_due, queue, id, body, attempt, lease_id, ...}. When no ready message is left
-- in these queues, next_due is the earliest time a delayed message becomes due or a lease
-- expires, as a string ('inf' for none, or false when nothing was leased either): the
-- client blocks no longer than that. While ready messages remain it is false.
local p, now, deadline = ARGV[1], ARGV[2], ARGV[3]
local limit, base = tonumber(ARGV[4]), ARGV[5]
local BATCH = 1000
local out = {false}
local taken = 0
local next_due = nil
local left = false

local function earliest(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] and (next_due == nil or tonumber(first[2]) < tonumber(next_due)) then
    next_due = first[2]
  end
end

for i = 6, #ARGV do
  local q = ARGV[i]
  local ready, dq, lq = p .. 'ready:' .. q, p .. 'delayed:' .. q, p .. 'leased:' .. q
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', dq, '-inf', now, 'LIMIT', 0, BATCH)) do
    local id = string.sub(member, 18)
    redis.call('ZREM', dq, member)
    redis.call('RPUSH', ready, id)
    redis.call('HSET', p .. 'msg:' .. id, 'state', 'ready')
  end
  -- An expired lease: its consumer died or stalled. The message goes to the back of its
  -- list and keeps its lease_id, so that the late holder may still ack it until someone
  -- else reserves it.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', lq, '-inf', now, 'LIMIT', 0, BATCH)) do
    redis.call('ZREM', lq, id)
    redis.call('RPUSH', ready, id)
    redis.call('HSET', p .. 'msg:' .. id, 'state', 'ready')
  end
  while taken < limit do
    local id = redis.call('LPOP', ready)
    if not id then break end
    local m = p .. 'msg:' .. id
    local body = redis.call('HGET', m, 'body')
    if body then
      taken = taken + 1
      local lease_id = base .. '.' .. taken
      local attempt = redis.call('HINCRBY', m, 'attempt', 1)
      redis.call('HSET', m, 'state', 'leased', 'lease_id', lease_id)
      redis.call('ZADD', lq, deadline, id)
      out[#out + 1] = q
      out[#out + 1] = id
      out[#out + 1] = body
      out[#out + 1] = attempt
      out[#out + 1] = lease_id
    end
  end
  local s = p .. 'signal:' .. q
  if redis.call('LLEN', ready) > 0 then
    -- Messages remain: pass the wake-up token on to another blocked consumer.
    left = true
    if redis.call('LLEN', s) == 0 then redis.call('RPUSH', s, '1') end
  else
    -- Nothing to wake anyone for: a token left by a publish whose message this call
    -- took would only send the next blocking reserve round for nothing.
    redis.call('DEL', s)
  end
end
if not left then
  for i = 6, #ARGV do
    earliest(p .. 'delayed:' .. ARGV[i])
    earliest(p .. 'leased:' .. ARGV[i])
  end
  if next_due then out[1] = next_due elseif taken > 0 then out[1] = 'inf' end
end
return out
