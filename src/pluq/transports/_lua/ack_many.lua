-- Ack a batch of leased messages, each exactly as settle.lua's 'ack' op acks one.
-- ARGV: prefix, now, dedupe_floor, remember, count, then per message: id, lease_id
--   remember: '1' keeps each acked id known to publish (in P done) until dedupe_floor
--   passes it; the done set is pruned once per batch.
-- Returns one integer per message: 1 acked, 0 lease_id is not its current lease (LeaseLost).
local p, now, floor, remember = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local count = tonumber(ARGV[5])
local done = p .. 'done'
local out = {}
for i = 0, count - 1 do
  local id, lease_id = ARGV[6 + i * 2], ARGV[7 + i * 2]
  local m = p .. 'msg:' .. id
  local cur = redis.call('HMGET', m, 'lease_id', 'state', 'queue')
  if cur[1] ~= lease_id then
    out[#out + 1] = 0
  else
    local q = cur[3]
    if cur[2] == 'leased' then
      redis.call('ZREM', p .. 'leased:' .. q, id)
    else
      -- Its lease expired and it went back to the ready list, but nobody took it.
      redis.call('LREM', p .. 'ready:' .. q, 1, id)
    end
    redis.call('DEL', m)
    if remember then redis.call('ZADD', done, now, id) end
    out[#out + 1] = 1
  end
end
if remember then redis.call('ZREMRANGEBYSCORE', done, '-inf', floor) end
return out
