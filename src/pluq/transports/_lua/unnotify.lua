-- Drop a task's wake-up token when its record is no longer ready (it was replaced by a
-- non-ready one, forgotten, or expired on the client's clock), so that waiters block
-- again instead of spinning on the token.
-- ARGV: record_key, notify_key, now. Returns 1 if the token was dropped.
local raw = redis.call('GET', ARGV[1])
if raw then
  local ok, record = pcall(cjson.decode, raw)
  if ok and type(record) == 'table' then
    local state = record['state']
    local expires_at = tonumber(record['_expires_at'])
    local ready = state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED'
    if ready and (expires_at == nil or expires_at > tonumber(ARGV[3])) then return 0 end
  end
end
return redis.call('DEL', ARGV[2])
