-- Jobs by the moment they ended, for the console's per-queue figures (GET /queues: failed
-- in the last hour, finishes per minute). INCLUDE makes those counts index-only scans of
-- the last hour, whatever the table's size. Cost: one more index entry when a job ends;
-- the end of a job is never a HOT update anyway (finished_at is in jobs_unfinished's
-- predicate), so it adds no heap write.
CREATE INDEX jobs_finished ON jobs (finished_at) INCLUDE (tenant, queue, state)
    WHERE finished_at IS NOT NULL;
