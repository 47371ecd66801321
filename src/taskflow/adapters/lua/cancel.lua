-- Ask whichever worker runs a job to stop it: a marker the heartbeat finds (it outlives
-- a missed message) and a message on the queue's cancel channel (immediate).
--
-- KEYS[1] cancel marker key ("<prefix>:{queue}:cancel:<id>")
-- ARGV[1] cancel channel    ARGV[2] job id    ARGV[3] marker ttl (ms)
redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[3]))
return redis.call('PUBLISH', ARGV[1], ARGV[2])
