-- Give leases back: the attempt ended (its outcome is in PostgreSQL) or never started.
-- Only a lease still holding this token is deleted; a newer holder's is left alone.
--
-- KEYS[1] in-flight set
-- ARGV[1] lease key prefix    ARGV[2..] pairs: job id, token
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call('GET', ARGV[1] .. id) == token then
    redis.call('DEL', ARGV[1] .. id)
  end
  redis.call('ZREM', KEYS[1], id .. '|' .. token)
end
return 0
