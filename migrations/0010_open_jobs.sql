-- Ending a job without an index write on jobs (a HOT update).
--
-- Six indexes of jobs depended on finished_at (jobs_unfinished, jobs_tenant_queue_unfinished
-- and jobs_tenant_unfinished, jobs_workflow_unfinished; jobs_finished and
-- jobs_tenant_finished), so the update that ends a job could not be HOT: the new row
-- version took an entry in every index of the table (the primary key, the idempotency
-- key, the tenant's list, the workflow's). In a layered workflow that update of 100 rows
-- is on the critical path of every layer: 2.35-2.54 ms for the layer's flush as it was,
-- 1.68-1.75 ms with those six indexes gone, 1.98-2.12 ms with what replaces them below
-- (a layer's two flushes back to back, 99 layers, alternating).
--
-- What they answered now lives in two narrow tables, kept by triggers on jobs in the
-- statement that changes a job (so that no writer, old or new, can miss them):
-- - open_jobs: one row per unfinished job (its tenant, queue and workflow): inserted with
--   the job, deleted when it ends (a delete writes no index entry), inserted again when a
--   finished job is retried or redriven;
-- - job_ends: one row each time a job ends (its tenant and the moment), for the figures of
--   jobs ended per minute. A job that ends again after a redrive has a row per end; the
--   readers take the job's own finished_at as the truth (see finished_by_minute).
-- Every finish sets finished_at = now(), the transaction's time, which job_ends records.

CREATE TABLE open_jobs (
    id          uuid PRIMARY KEY,
    tenant      text NOT NULL,
    queue       text NOT NULL,
    workflow_id uuid
);
CREATE INDEX open_jobs_tenant_queue ON open_jobs (tenant, queue);
CREATE INDEX open_jobs_tenant_id ON open_jobs (tenant, id);
CREATE INDEX open_jobs_workflow ON open_jobs (workflow_id) WHERE workflow_id IS NOT NULL;

CREATE TABLE job_ends (
    job_id      uuid NOT NULL,
    tenant      text NOT NULL,
    finished_at timestamptz NOT NULL
);
CREATE INDEX job_ends_finished ON job_ends (finished_at);
CREATE INDEX job_ends_tenant_finished ON job_ends (tenant, finished_at);

-- Nothing touches jobs from here to the commit (processes still running wait): the
-- backfill and the triggers below must see the same jobs, or a job written between them
-- would be missing from open_jobs for good. The strongest lock at once, not a write lock
-- now and the one DROP INDEX needs later: a reader waiting to write in between would
-- deadlock with this migration.
LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE;
INSERT INTO open_jobs (id, tenant, queue, workflow_id)
SELECT id, tenant, queue, workflow_id FROM jobs WHERE finished_at IS NULL;
INSERT INTO job_ends (job_id, tenant, finished_at)
SELECT id, tenant, finished_at FROM jobs WHERE finished_at IS NOT NULL;

-- Statement-level, over the transition tables: the outbox trigger (0003) has them built
-- already. The ended jobs' rows go by primary key (= ANY of an array: an index scan
-- whatever the planner settings of the caller), and their job_ends rows come from what
-- the delete found, so a row that was finished already (a release passing over a
-- cancelled dependent) records no second end.
CREATE FUNCTION taskflow_open_jobs_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO open_jobs (id, tenant, queue, workflow_id)
    SELECT n.id, n.tenant, n.queue, n.workflow_id FROM new_jobs AS n
    WHERE n.finished_at IS NULL;
    -- Jobs inserted ended (a workflow's job whose upstream had failed: cancelled).
    INSERT INTO job_ends (job_id, tenant, finished_at)
    SELECT n.id, n.tenant, n.finished_at FROM new_jobs AS n
    WHERE n.finished_at IS NOT NULL;
    RETURN NULL;
END;
$$;

CREATE FUNCTION taskflow_open_jobs_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended uuid[];
BEGIN
    SELECT array_agg(n.id) INTO ended FROM new_jobs AS n WHERE n.finished_at IS NOT NULL;
    IF ended IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM open_jobs AS o WHERE o.id = ANY (ended)
            RETURNING o.id, o.tenant
        )
        INSERT INTO job_ends (job_id, tenant, finished_at)
        SELECT g.id, g.tenant, now() FROM gone AS g;
    END IF;
    -- Finished jobs made unfinished again (retried, redriven, reset): rare, so the
    -- common statement (claims, starts, finishes of unfinished jobs) only pays the check.
    IF EXISTS (SELECT 1 FROM old_jobs AS o WHERE o.finished_at IS NOT NULL) THEN
        INSERT INTO open_jobs (id, tenant, queue, workflow_id)
        SELECT n.id, n.tenant, n.queue, n.workflow_id FROM new_jobs AS n
        WHERE n.finished_at IS NULL
        ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

-- A TRUNCATE of jobs (tests, benchmarks, an operator starting over) empties both.
CREATE FUNCTION taskflow_open_jobs_after_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE open_jobs, job_ends;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_open_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_open_jobs_after_truncate();
CREATE TRIGGER jobs_open_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_open_jobs_after_insert();
CREATE TRIGGER jobs_open_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_open_jobs_after_update();

DROP INDEX jobs_unfinished, jobs_tenant_queue_unfinished, jobs_tenant_unfinished,
           jobs_workflow_unfinished, jobs_finished, jobs_tenant_finished;
