-- Take the leases of jobs a worker started itself: dependents its own outcome flush
-- released and moved to running in PostgreSQL (taskflow_finish_and_start), with the
-- tokens PostgreSQL holds for them. They were never indexed, so nobody else claims them;
-- a lease is set where none is (or ours is, taken back by a heartbeat meanwhile) and
-- recorded in the in-flight set so the reaper finds it if the worker dies. A lease held
-- under another token means the attempt was rescued and claimed again while this settle
-- was late: it is left alone and the job reported, for the worker to stop its handler.
--
-- KEYS[1] in-flight set
-- ARGV[1] lease key prefix    ARGV[2] lease ttl (ms)    ARGV[3..] pairs: job id, token
-- Returns the ids whose lease another token holds.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local key, token = ARGV[1] .. ARGV[i], ARGV[i + 1]
  local holder = redis.call('GET', key)
  if not holder or holder == token then
    redis.call('SET', key, token, 'PX', ttl)
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i] .. '|' .. token)
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
