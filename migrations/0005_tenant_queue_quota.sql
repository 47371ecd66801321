-- A tenant's unfinished jobs in one queue, counted at submit when the queue bounds them
-- (tenant_limits.max_active). Partial on finished_at like jobs_unfinished: a job leaves
-- it once, when it ends, and updates that change no indexed column stay HOT.
CREATE INDEX jobs_tenant_queue_unfinished ON jobs (tenant, queue) WHERE finished_at IS NULL;
