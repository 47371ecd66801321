-- DAG dependencies and workflows.
--
-- A job waits (state 'blocked') while pending_upstreams > 0: the number of its upstream
-- jobs that have not succeeded yet. The statement that records an upstream success
-- decrements its dependents' counts and queues those that reach zero (taskflow_finish_jobs
-- below): release is event-driven and costs O(edges), with no scan of blocked jobs.

CREATE TABLE workflows (
    id         uuid PRIMARY KEY,
    tenant     text NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflows_tenant_id ON workflows (tenant, id);

-- As with job_attempts (0001), no foreign keys: they cost a query per row on the paths
-- that insert thousands of rows at once (a workflow's jobs and edges); the code inserts a
-- workflow, its jobs and its edges in one transaction, and edges only between jobs it has
-- locked or created.
ALTER TABLE jobs
    ADD COLUMN workflow_id uuid,
    ADD COLUMN node text,                                 -- its name within the workflow
    ADD COLUMN upstream_count integer NOT NULL DEFAULT 0,  -- direct upstream jobs
    ADD COLUMN pending_upstreams integer NOT NULL DEFAULT 0
        CHECK (pending_upstreams >= 0),
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    ADD COLUMN cancelled_by uuid;  -- the upstream whose failure or cancellation ended it
CREATE INDEX jobs_workflow ON jobs (workflow_id) WHERE workflow_id IS NOT NULL;

CREATE TABLE job_dependencies (
    upstream_id uuid NOT NULL,
    job_id      uuid NOT NULL,
    PRIMARY KEY (upstream_id, job_id),
    CHECK (upstream_id <> job_id)
);
CREATE INDEX job_dependencies_job ON job_dependencies (job_id, upstream_id);

-- Cancel, all the way down, the blocked descendants of jobs that ended failed or
-- cancelled (roots, with the state each ended in); each records which root doomed it and
-- says so in its error. Returns the jobs cancelled.
CREATE FUNCTION taskflow_cancel_dependents(roots uuid[], root_states job_state[])
RETURNS TABLE (id uuid, queue text, priority integer, run_at timestamptz, state job_state)
LANGUAGE sql
-- Reaches every row by key: see the release in taskflow_finish_jobs for why.
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
    WITH RECURSIVE root AS (
        SELECT * FROM unnest(roots, root_states) AS r(id, state)
    ), down (id, root) AS (
        SELECT d.job_id, d.upstream_id
        FROM job_dependencies AS d JOIN root ON d.upstream_id = root.id
        UNION
        SELECT d.job_id, down.root
        FROM job_dependencies AS d JOIN down ON d.upstream_id = down.id
    ), doomed AS (
        SELECT DISTINCT ON (down.id) down.id, down.root, root.state, u.node
        FROM down JOIN root ON root.id = down.root JOIN jobs AS u ON u.id = down.root
        ORDER BY down.id, down.root
    )
    UPDATE jobs AS j
    SET state = 'cancelled', finished_at = now(), cancelled_by = doomed.root,
        error = 'cancelled because upstream job ' || doomed.root
                || coalesce(' (' || doomed.node || ')', '') || ' ended ' || doomed.state
    FROM doomed
    WHERE j.id = doomed.id AND j.state = 'blocked'
    RETURNING j.id, j.queue, j.priority, j.run_at, j.state;
$$;

-- Ends a batch of running attempts (see queries.sql: finish_jobs), then releases the
-- dependents of the jobs that succeeded and cancels those of the jobs that failed.
-- A function, not one statement, for a reason: each statement of a PL/pgSQL function
-- takes a fresh snapshot, so the release below sees every edge committed by a concurrent
-- submit that the first statement had to wait for (it locks the upstream row; see
-- lock_upstreams in queries.sql). One round trip still.
CREATE FUNCTION taskflow_finish_jobs(
    ids uuid[], tokens text[], states job_state[], results text[], errors text[],
    delays float8[], outcomes text[], durations float8[]
) RETURNS TABLE (id uuid, queue text, priority integer, run_at timestamptz, state job_state)
LANGUAGE plpgsql AS $$
DECLARE
    m_ids uuid[]; m_queues text[]; m_priorities integer[]; m_run_ats timestamptz[];
    m_states job_state[]; m_fanout boolean[];
    ended_ids uuid[]; ended_states job_state[];
    saved_seqscan text := current_setting('enable_seqscan');
    saved_hashjoin text := current_setting('enable_hashjoin');
    saved_mergejoin text := current_setting('enable_mergejoin');
BEGIN
    WITH done AS (
        SELECT * FROM unnest(ids, tokens, states, results, errors, delays, outcomes,
                             durations)
            AS d(id, token, state, result, error, delay, outcome, duration)
    ), moved AS (
        UPDATE jobs AS j
        SET state = CASE WHEN j.cancel_requested AND d.state IN ('scheduled', 'queued')
                         THEN 'cancelled' ELSE d.state END,
            result = CASE WHEN d.state = 'succeeded' THEN d.result::jsonb ELSE j.result END,
            error = d.error,
            run_at = CASE WHEN d.state IN ('scheduled', 'queued') AND NOT j.cancel_requested
                          THEN now() + make_interval(secs => coalesce(d.delay, 0))
                          ELSE j.run_at END,
            finished_at = CASE WHEN d.state IN ('succeeded', 'failed', 'cancelled')
                                    OR j.cancel_requested
                               THEN now() END,
            lease_token = NULL
        FROM done AS d
        WHERE j.id = d.id AND j.state = 'running' AND j.lease_token = d.token
        RETURNING j.id, j.queue, j.priority, j.run_at, j.state, j.attempts, j.worker,
                  j.started_at, j.has_dependents, d.duration, d.outcome, d.error
    ), recorded AS (
        INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at,
                                  duration, outcome, error)
        SELECT m.id, m.attempts, m.worker, m.started_at, now(), m.duration,
               CASE WHEN m.state = 'cancelled' THEN 'cancelled' ELSE m.outcome END, m.error
        FROM moved AS m
    )
    SELECT coalesce(array_agg(m.id), '{}'), array_agg(m.queue), array_agg(m.priority),
           array_agg(m.run_at), array_agg(m.state), array_agg(m.has_dependents)
    INTO m_ids, m_queues, m_priorities, m_run_ats, m_states, m_fanout
    FROM moved AS m;

    RETURN QUERY SELECT * FROM unnest(m_ids, m_queues, m_priorities, m_run_ats, m_states);
    IF NOT true = ANY (m_fanout) THEN
        RETURN;  -- the common case: nobody waits on these jobs
    END IF;

    -- Release: one decrement per (dependent, succeeded upstream) edge. The count stays
    -- true for dependents cancelled meanwhile too (a retry may revive them), but only
    -- blocked ones move. Dependents are locked in id order so that concurrent flushes
    -- cannot deadlock on them.
    --
    -- This statement reaches every row by key (edges of the succeeded jobs, then their
    -- dependents), so index lookups in nested loops are the right plan at any size; the
    -- planner, misjudging the intermediate sizes (200 groups where there is one), would
    -- otherwise hash-join whole scans of jobs and job_dependencies: 3 ms per release at
    -- 10,000 jobs, and growing with the tables. Hence the settings, for it alone.
    PERFORM set_config('enable_seqscan', 'off', true),
            set_config('enable_hashjoin', 'off', true),
            set_config('enable_mergejoin', 'off', true);
    RETURN QUERY
    WITH succeeded AS (
        SELECT u.id FROM unnest(m_ids, m_states, m_fanout) AS u(id, state, fanout)
        WHERE u.state = 'succeeded' AND u.fanout
    ), counts AS (
        SELECT d.job_id, count(*)::integer AS n
        FROM succeeded AS s JOIN job_dependencies AS d ON d.upstream_id = s.id
        GROUP BY d.job_id
    ), locked AS (
        SELECT j.id, c.n FROM counts AS c JOIN jobs AS j ON j.id = c.job_id
        WHERE j.state IN ('blocked', 'cancelled') ORDER BY j.id FOR NO KEY UPDATE OF j
    )
    UPDATE jobs AS j
    SET pending_upstreams = j.pending_upstreams - l.n,
        state = CASE WHEN j.state = 'cancelled' THEN 'cancelled'
                     WHEN j.pending_upstreams - l.n > 0 THEN 'blocked'
                     WHEN j.run_at > clock_timestamp() THEN 'scheduled'
                     ELSE 'queued' END::job_state
    FROM locked AS l
    WHERE j.id = l.id AND j.state IN ('blocked', 'cancelled')
    RETURNING j.id, j.queue, j.priority, j.run_at, j.state;
    PERFORM set_config('enable_seqscan', saved_seqscan, true),
            set_config('enable_hashjoin', saved_hashjoin, true),
            set_config('enable_mergejoin', saved_mergejoin, true);

    SELECT array_agg(u.id), array_agg(u.state) INTO ended_ids, ended_states
    FROM unnest(m_ids, m_states, m_fanout) AS u(id, state, fanout)
    WHERE u.state IN ('failed', 'cancelled') AND u.fanout;
    IF ended_ids IS NOT NULL THEN
        RETURN QUERY SELECT * FROM taskflow_cancel_dependents(ended_ids, ended_states);
    END IF;
END;
$$;

-- A failed or cancelled job is being retried: the descendants that were cancelled because
-- of an upstream return to 'blocked' (they wait for it again) unless another of their
-- upstreams, outside that set, has failed or been cancelled, in which case they, and what
-- hangs below them, stay cancelled. Returns the jobs revived.
CREATE FUNCTION taskflow_revive_dependents(root uuid)
RETURNS SETOF uuid
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $$
DECLARE
    revived uuid[];
    kept uuid[];
BEGIN
    WITH RECURSIVE down (id) AS (
        SELECT d.job_id FROM job_dependencies AS d WHERE d.upstream_id = root
        UNION
        SELECT d.job_id FROM job_dependencies AS d JOIN down ON d.upstream_id = down.id
    )
    SELECT coalesce(array_agg(j.id), '{}') INTO revived
    FROM down JOIN jobs AS j ON j.id = down.id
    WHERE j.state = 'cancelled' AND j.cancelled_by IS NOT NULL;
    -- Lock their upstreams (in id order) before reading their states: an upstream failing
    -- concurrently either finishes first, and is seen failed below, or waits for this
    -- transaction and then finds the revived job blocked and cancels it.
    PERFORM 1 FROM job_dependencies AS d JOIN jobs AS u ON u.id = d.upstream_id
    WHERE d.job_id = ANY (revived) AND u.id <> root
    ORDER BY u.id FOR SHARE OF u;
    LOOP
        SELECT coalesce(array_agg(DISTINCT d.job_id), '{}') INTO kept
        FROM job_dependencies AS d JOIN jobs AS u ON u.id = d.upstream_id
        WHERE d.job_id = ANY (revived) AND d.upstream_id <> root
          AND u.state IN ('failed', 'cancelled') AND NOT u.id = ANY (revived);
        EXIT WHEN cardinality(kept) = 0;
        revived := ARRAY(SELECT unnest(revived) EXCEPT SELECT unnest(kept));
    END LOOP;
    RETURN QUERY
    UPDATE jobs AS j
    SET state = 'blocked', finished_at = NULL, error = NULL, cancelled_by = NULL
    WHERE j.id = ANY (revived) AND j.state = 'cancelled'
    RETURNING j.id;
END;
$$;
