-- Publish messages, idempotent on id (one call publishes a whole batch).
-- ARGV: prefix, now, dedupe_floor, count, then per message: queue, id, body, not_before
--   dedupe_floor: acks scored at or below it are forgotten (now - dedupe_window).
--   not_before: '' for "ready now".
-- Returns one integer per message: 1 queued, 0 the id is already known.
local p, now, floor = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local done = p .. 'done'
local out, wake = {}, {}
for i = 0, count - 1 do
  local at = 5 + i * 4
  local q, id, body, nb = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local m = p .. 'msg:' .. id
  local fresh = redis.call('EXISTS', m) == 0
  if fresh then
    local acked = redis.call('ZSCORE', done, id)
    if acked then
      if tonumber(acked) > floor then
        fresh = false
      else
        redis.call('ZREM', done, id)
      end
    end
  end
  if fresh then
    redis.call('SADD', p .. 'queues', q)
    if nb ~= '' and tonumber(nb) > now then
      -- The member starts with a sequence number so that messages due at the same time
      -- become ready in publish order (equal scores sort by member).
      local seq = tostring(redis.call('INCR', p .. 'seq'))
      local member = string.rep('0', 16 - #seq) .. seq .. ':' .. id
      local dq = p .. 'delayed:' .. q
      redis.call('HSET', m, 'queue', q, 'body', body, 'attempt', 0, 'state', 'delayed',
        'dkey', member)
      redis.call('ZADD', dq, nb, member)
      -- Blocked consumers wait until the earliest due time they know of: wake them when
      -- this message is now the earliest, so they shorten their wait.
      if redis.call('ZRANGE', dq, 0, 0)[1] == member then wake[q] = true end
    else
      redis.call('HSET', m, 'queue', q, 'body', body, 'attempt', 0, 'state', 'ready')
      redis.call('RPUSH', p .. 'ready:' .. q, id)
      wake[q] = true
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
-- One wake-up token per queue at most: each token wakes one blocked consumer, which passes
-- it on (reserve.lua) while messages remain.
for q in pairs(wake) do
  local s = p .. 'signal:' .. q
  if redis.call('LLEN', s) == 0 then redis.call('RPUSH', s, '1') end
end
return out
