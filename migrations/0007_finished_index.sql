-- Indexes for the console's figures (GET /queues).
--
-- Jobs by the moment they ended (jobs ended per minute, failed in the last hour): every
-- tenant's, and one tenant's. Only finished_at (and the tenant, which never changes) is
-- indexed, on purpose: a column in an index (even an INCLUDE column) makes every update
-- that changes it a non-HOT update, and `state` changes on every transition; finished_at
-- changes only when a job ends or is retried, and those updates are non-HOT already
-- (finished_at is in jobs_unfinished's predicate). So these cost one entry each per
-- finished job and nothing on the hot path. Leading with the tenant keeps a tenant's read
-- to its own rows of the window (without it the planner ANDed jobs_finished with the
-- idempotency index, reading all of the tenant's history).
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_tenant_finished ON jobs (tenant, finished_at) WHERE finished_at IS NOT NULL;

-- A tenant's unfinished jobs oldest first, so GET /queues samples the oldest of them
-- (every tenant's: jobs_unfinished). One entry per job while it is unfinished: the
-- submit inserts it, the update that ends the job is non-HOT already.
CREATE INDEX jobs_tenant_unfinished ON jobs (tenant, id) WHERE finished_at IS NULL;

-- A workflow's unfinished jobs, so GET /workflows tells a running workflow in one probe
-- whatever its size. One entry per workflow job while it is unfinished, as above.
CREATE INDEX jobs_workflow_unfinished ON jobs (workflow_id)
    WHERE finished_at IS NULL AND workflow_id IS NOT NULL;
