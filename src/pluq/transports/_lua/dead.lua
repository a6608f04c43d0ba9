-- The dead-letter queue: list, retry or purge.
-- ARGV: prefix, op ('list' | 'retry' | 'purge'), then:
--   list:          queue or '' for every queue
--   retry / purge: id... or nothing for every dead message
-- list returns {seq, id, queue, body, reason, attempt, dead_at, ...} (the client sorts by
-- seq: oldest first); retry and purge return how many messages they moved or deleted.
local p, op = ARGV[1], ARGV[2]

local function all_dead(only)
  local queues
  if only and only ~= '' then queues = {only} else queues = redis.call('SMEMBERS', p .. 'queues') end
  local found = {}
  for _, q in ipairs(queues) do
    local entries = redis.call('ZRANGE', p .. 'dead:' .. q, 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      found[#found + 1] = {tonumber(entries[i + 1]), entries[i], q}
    end
  end
  table.sort(found, function(a, b) return a[1] < b[1] end)
  return found
end

if op == 'list' then
  local out = {}
  for _, e in ipairs(all_dead(ARGV[3])) do
    local f = redis.call('HMGET', p .. 'msg:' .. e[2], 'body', 'reason', 'attempt', 'dead_at')
    out[#out + 1] = tostring(e[1])
    out[#out + 1] = e[2]
    out[#out + 1] = e[3]
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = f[4]
  end
  return out
end

local targets = {}
if #ARGV > 2 then
  for i = 3, #ARGV do
    local q = redis.call('HGET', p .. 'msg:' .. ARGV[i], 'queue')
    if q and redis.call('HGET', p .. 'msg:' .. ARGV[i], 'state') == 'dead' then
      targets[#targets + 1] = {0, ARGV[i], q}
    end
  end
else
  targets = all_dead(nil)
end
local n, woken = 0, {}
for _, e in ipairs(targets) do
  local id, q = e[2], e[3]
  local m = p .. 'msg:' .. id
  if redis.call('ZREM', p .. 'dead:' .. q, id) == 1 then
    n = n + 1
    if op == 'retry' then
      redis.call('HDEL', m, 'reason', 'dead_at')
      redis.call('HSET', m, 'state', 'ready')
      redis.call('RPUSH', p .. 'ready:' .. q, id)
      woken[q] = true
    else
      redis.call('DEL', m)
    end
  end
end
for q in pairs(woken) do
  local s = p .. 'signal:' .. q
  if redis.call('LLEN', s) == 0 then redis.call('RPUSH', s, '1') end
end
return n
