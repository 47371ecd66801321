-- Forget what the dispatch index holds about jobs that are about to be indexed anew (a
-- retried job): its ready or delayed entry, left when it was cancelled and carrying a
-- stale due time, and a cancel marker that would stop the new attempt. Leases are left
-- alone: a lease holder finds the job queued again and runs it.
--
-- KEYS[1] ready set    KEYS[2] delayed set
-- ARGV[1] cancel key prefix
-- ARGV[2..] pairs: job id, priority (the delayed member is "<id>|<priority>", see enqueue.lua)
-- Returns the number of entries removed.
local removed = 0
for i = 2, #ARGV, 2 do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  removed = removed + redis.call('ZREM', KEYS[2], ARGV[i] .. '|' .. ARGV[i + 1])
  redis.call('DEL', ARGV[1] .. ARGV[i])
end
return removed
