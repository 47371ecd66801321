-- Take the leases of jobs a worker started itself: dependents its own outcome flush
-- released and moved to running in PostgreSQL (taskflow_finish_and_start), with the
-- tokens PostgreSQL holds for them. They were never indexed, so nobody else claims them;
-- the lease is set whatever Redis holds (PostgreSQL's token is the attempt's truth), and
-- recorded in the in-flight set so the reaper finds it if the worker dies.
--
-- KEYS[1] in-flight set
-- ARGV[1] lease key prefix    ARGV[2] lease ttl (ms)    ARGV[3..] pairs: job id, token
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('SET', ARGV[1] .. ARGV[i], ARGV[i + 1], 'PX', ttl)
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i] .. '|' .. ARGV[i + 1])
end
return 0
