-- Heartbeat: extend the leases a worker still holds and move their in-flight deadline;
-- take back the leases Redis lost; report the leases held by someone else and the jobs
-- whose cancellation was requested.
--
-- KEYS[1] in-flight set
-- ARGV[1] lease key prefix    ARGV[2] cancel key prefix    ARGV[3] lease ttl (ms)
-- ARGV[4..] pairs: job id, token
-- Returns {lost ids, cancel-requested ids, retaken ids}.
-- - lost: another token holds the lease (it expired and the job was claimed again); the
--   worker must stop that handler, its outcome would be fenced off anyway.
-- - retaken: no lease existed (Redis was flushed or restarted empty); it is set again with
--   this token, and the worker asks PostgreSQL whether the attempt is still its own.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local lost, cancel, retaken = {}, {}, {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local holder = redis.call('GET', ARGV[1] .. id)
  if holder == token then
    redis.call('PEXPIRE', ARGV[1] .. id, ttl)
  elseif not holder then
    redis.call('SET', ARGV[1] .. id, token, 'PX', ttl)
    retaken[#retaken + 1] = id
  end
  if holder == token or not holder then
    redis.call('ZADD', KEYS[1], now + ttl, id .. '|' .. token)
    if redis.call('EXISTS', ARGV[2] .. id) == 1 then cancel[#cancel + 1] = id end
  else
    redis.call('ZREM', KEYS[1], id .. '|' .. token)
    lost[#lost + 1] = id
  end
end
return {lost, cancel, retaken}
