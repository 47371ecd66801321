-- Sizes of one queue's dispatch sets and the due time of its oldest ready job, at a cost
-- bounded whatever the backlog: ZCARD is O(1), ZCOUNT and each range probe O(log n).
--
-- The ready set is scored (1000 - priority) * 2^42 + (due ms - 2025-01-01) (claim.lua),
-- so within one priority band the first member is the band's oldest; the oldest ready job
-- is the oldest of the bands' first members. One probe per band present, at most ARGV[1]
-- bands (a queue uses a handful of priorities; past the bound the age is a lower bound).
-- Delayed jobs that are due but not yet promoted (no worker has claimed since) are ready
-- too: they are counted as ready and their due time is a candidate for the oldest.
--
-- KEYS[1] ready set    KEYS[2] delayed set    KEYS[3] in-flight set
-- ARGV[1] most priority bands to probe
-- Returns {ready, scheduled, running, oldest ready due ms or -1, now ms}
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local band_width = 4398046511104
local epoch = 1735689600000

local due_delayed = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local ready = redis.call('ZCARD', KEYS[1]) + due_delayed
local scheduled = redis.call('ZCARD', KEYS[2]) - due_delayed
local running = redis.call('ZCARD', KEYS[3])

local oldest = -1
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if head[2] and tonumber(head[2]) <= now then oldest = tonumber(head[2]) end

local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local probes = tonumber(ARGV[1])
while first[2] and probes > 0 do
  local score = tonumber(first[2])
  local band = math.floor(score / band_width)
  local due = score - band * band_width + epoch
  if oldest < 0 or due < oldest then oldest = due end
  probes = probes - 1
  first = redis.call('ZRANGEBYSCORE', KEYS[1], (band + 1) * band_width, '+inf',
                     'WITHSCORES', 'LIMIT', 0, 1)
end
return {ready, scheduled, running, oldest, now}
