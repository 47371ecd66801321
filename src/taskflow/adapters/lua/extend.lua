-- Heartbeat: extend the leases a worker still holds and move their in-flight deadline;
-- report the leases it lost and the jobs whose cancellation was requested.
--
-- KEYS[1] in-flight set
-- ARGV[1] lease key prefix    ARGV[2] cancel key prefix    ARGV[3] lease ttl (ms)
-- ARGV[4..] pairs: job id, token
-- Returns {lost ids, cancel-requested ids}. A lost lease (expired or taken over) means
-- the worker must stop that handler: it can no longer record the outcome.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local lost, cancel = {}, {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call('GET', ARGV[1] .. id) == token then
    redis.call('PEXPIRE', ARGV[1] .. id, ttl)
    redis.call('ZADD', KEYS[1], now + ttl, id .. '|' .. token)
    if redis.call('EXISTS', ARGV[2] .. id) == 1 then cancel[#cancel + 1] = id end
  else
    redis.call('ZREM', KEYS[1], id .. '|' .. token)
    lost[#lost + 1] = id
  end
end
return {lost, cancel}
