-- Heartbeat: extend the leases a worker still holds and move their in-flight deadline.
--
-- KEYS[1] in-flight set
-- ARGV[1] lease key prefix    ARGV[2] lease ttl (ms)    ARGV[3..] pairs: job id, token
-- Returns the ids whose lease is no longer this token's (expired or taken over): the
-- worker must stop those handlers, it can no longer record their outcome.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call('GET', ARGV[1] .. id) == token then
    redis.call('PEXPIRE', ARGV[1] .. id, ttl)
    redis.call('ZADD', KEYS[1], now + ttl, id .. '|' .. token)
  else
    redis.call('ZREM', KEYS[1], id .. '|' .. token)
    lost[#lost + 1] = id
  end
end
return lost
