-- Claim up to ARGV[2] jobs of one queue, atomically: promote the delayed jobs that are
-- due into the ready set, pop the highest-priority ready jobs (FIFO within a priority),
-- take each one's lease with SET NX PX, and record it in the in-flight set.
--
-- KEYS[1] ready set    KEYS[2] delayed set    KEYS[3] in-flight set
-- ARGV[1] lease key prefix ("<prefix>:{queue}:lease:"; same hash slot as KEYS)
-- ARGV[2] most jobs to claim    ARGV[3] lease ttl (ms)
-- ARGV[4] token prefix, unique per call    ARGV[5] most delayed jobs to promote
-- Returns {{id, token, id, token, ...}, due ms of the next delayed job or -1,
--          Redis time in microseconds}
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Ready score: (1000 - priority) * 2^42 + (due ms - 2025-01-01): priority first, then
-- due time; ties fall back to the member (a time-ordered UUIDv7), i.e. creation order.
-- The largest score, 2000 * 2^42 + 2^42, stays below 2^53, exact in a double. The due
-- part is clamped to [0, 2^42) so that no run_at, however old, outranks a priority.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[5]))
for i = 1, #due, 2 do
  local member = due[i]
  local sep = string.find(member, '|', 1, true)
  local prio = tonumber(string.sub(member, sep + 1))
  local rel = math.min(math.max(tonumber(due[i + 1]) - 1735689600000, 0), 4398046511103)
  local score = (1000 - prio) * 4398046511104 + rel
  redis.call('ZADD', KEYS[1], score, string.sub(member, 1, sep - 1))
  redis.call('ZREM', KEYS[2], member)
end

local out = {}
local claimed = 0
local seq = 0
local max = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
while claimed < max do
  local popped = redis.call('ZPOPMIN', KEYS[1], max - claimed)
  if #popped == 0 then break end
  for i = 1, #popped, 2 do
    local id = popped[i]
    seq = seq + 1
    local token = ARGV[4] .. seq
    -- A job whose lease is held is running already (re-indexed while it was being
    -- claimed): dropping it from the ready set is right, its holder owns it.
    if redis.call('SET', ARGV[1] .. id, token, 'NX', 'PX', ttl) then
      redis.call('ZADD', KEYS[3], now + ttl, id .. '|' .. token)
      claimed = claimed + 1
      out[#out + 1] = id
      out[#out + 1] = token
    end
  end
end

local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local next_due = -1
if head[2] then next_due = tonumber(head[2]) end
return {out, next_due, tonumber(t[1]) * 1000000 + tonumber(t[2])}
