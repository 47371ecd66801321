-- Find attempts whose lease expired (the worker crashed, froze or was partitioned) and
-- take them out of the in-flight set; the caller rescues them in PostgreSQL.
--
-- KEYS[1] in-flight set
-- ARGV[1] lease key prefix    ARGV[2] most entries to look at
-- Returns {id, token, id, token, ...}
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0,
                           tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(expired) do
  local sep = string.find(member, '|', 1, true)
  local id, token = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  local pttl = redis.call('PTTL', ARGV[1] .. id)
  if pttl > 0 and redis.call('GET', ARGV[1] .. id) == token then
    -- still held: the deadline lags the lease, move it
    redis.call('ZADD', KEYS[1], now + pttl, member)
  else
    redis.call('ZREM', KEYS[1], member)
    out[#out + 1] = id
    out[#out + 1] = token
  end
end
return out
