-- An atomic counter that expires `expires` seconds (on the client's clock) after its last
-- change: a hash {value, expires_at}, also given a server TTL so that Redis frees it.
-- ARGV: key, amount, now, expires_at, ttl_ms. Returns the new value.
local key = ARGV[1]
local expires_at = redis.call('HGET', key, 'expires_at')
if expires_at and tonumber(expires_at) <= tonumber(ARGV[3]) then
  redis.call('DEL', key)
end
local value = redis.call('HINCRBY', key, 'value', ARGV[2])
redis.call('HSET', key, 'expires_at', ARGV[4])
redis.call('PEXPIRE', key, ARGV[5])
return value
