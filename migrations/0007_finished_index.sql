-- Jobs by the moment they ended, for the console's figures (GET /queues: jobs ended per
-- minute, failed in the last hour). Only finished_at is indexed, on purpose: a column in
-- an index (even an INCLUDE column) makes every update that changes it a non-HOT update,
-- and `state` changes on every transition; finished_at changes only when a job ends or is
-- retried, and those updates are non-HOT already (finished_at is in jobs_unfinished's
-- predicate). So this index costs one entry per finished job and nothing on the hot path.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
