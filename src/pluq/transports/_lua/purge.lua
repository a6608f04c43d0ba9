-- Remove up to `batch` ready and delayed messages of one queue (the client calls again
-- until fewer come back, so that Redis is never blocked for long).
-- ARGV: prefix, queue, batch. Returns how many were removed.
local p, q, batch = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = 0
local ids = redis.call('LPOP', p .. 'ready:' .. q, batch)
if ids then
  for _, id in ipairs(ids) do redis.call('DEL', p .. 'msg:' .. id) end
  n = n + #ids
end
local members = redis.call('ZPOPMIN', p .. 'delayed:' .. q, batch)
for i = 1, #members, 2 do
  redis.call('DEL', p .. 'msg:' .. string.sub(members[i], 18))
  n = n + 1
end
return n
