-- Index jobs for dispatch: due ones in the ready set, later ones in the delayed set.
-- A job already ready, or leased (running, or being claimed), is left alone, so the
-- reconciler can call this for every job PostgreSQL says is dispatchable. A job already
-- in the delayed set takes the due time given here (PostgreSQL's, the truth): an entry
-- left from before a cancel and a retry must not hold the job back to its old due time.
--
-- KEYS[1] ready set    KEYS[2] delayed set
-- ARGV[1] lease key prefix    ARGV[2] wake-up channel
-- ARGV[3..] triples: job id, priority (-1000..1000), due time (Unix ms)
-- Publishes "<added>@<Redis time, us>" on the wake-up channel if it added any.
-- Returns the number of jobs added (or moved to a new due time).
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = 0
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local prio = tonumber(ARGV[i + 1])
  local due = tonumber(ARGV[i + 2])
  local member = id .. '|' .. ARGV[i + 1]
  local delayed = redis.call('ZSCORE', KEYS[2], member)
  if not redis.call('ZSCORE', KEYS[1], id)
      and (not delayed or tonumber(delayed) ~= due)
      and redis.call('EXISTS', ARGV[1] .. id) == 0 then
    if due <= now then
      if delayed then redis.call('ZREM', KEYS[2], member) end
      -- same score formula as claim.lua
      local rel = math.min(math.max(due - 1735689600000, 0), 4398046511103)
      redis.call('ZADD', KEYS[1], (1000 - prio) * 4398046511104 + rel, id)
    else
      redis.call('ZADD', KEYS[2], due, member)
    end
    added = added + 1
  end
end
-- The message says when (Redis's clock, microseconds), so a worker can tell an index
-- change from before its last claim (see WakeListener.indexed_since).
if added > 0 then
  local at = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('PUBLISH', ARGV[2], added .. '@' .. string.format('%.0f', at))
end
return added
