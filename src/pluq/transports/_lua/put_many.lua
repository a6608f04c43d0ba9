-- Store a batch of task records, each exactly as RedisBackend.put stores one.
-- ARGV: prefix, ttl_ms, count, then per record: task_id, record_json, ready
--   ready: '0' not ready; '1' ready, token "1"; '2' ready, the record JSON is the token.
--   ttl_ms: '' for no expiry; '0' for already expired (the record and its token are
--   deleted, as if put and gone).
-- A ready record leaves one wake-up token in P notify:<id> (see RedisBackend.wait); any
-- other record drops the token of an earlier one.
local p, ttl = ARGV[1], ARGV[2]
local count = tonumber(ARGV[3])
for i = 0, count - 1 do
  local id, text, ready = ARGV[4 + i * 3], ARGV[5 + i * 3], ARGV[6 + i * 3]
  local key, notify = p .. 'result:' .. id, p .. 'notify:' .. id
  if ttl == '0' then
    redis.call('DEL', key, notify)
  else
    if ttl == '' then
      redis.call('SET', key, text)
    else
      redis.call('SET', key, text, 'PX', ttl)
    end
    redis.call('DEL', notify)
    if ready ~= '0' then
      redis.call('RPUSH', notify, ready == '2' and text or '1')
      if ttl ~= '' then redis.call('PEXPIRE', notify, ttl) end
    end
  end
end
return count
