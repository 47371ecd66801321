-- A dependent released by its last upstream becomes due when it is released, not when it
-- was created: run_at moves up to the release (a later run_at, from a delay, stands).
-- Its queue wait (due -> started, taskflow_job_queue_wait_seconds) then measures the
-- wait for a worker, not the time its upstreams ran, and it takes its FIFO place among
-- the jobs of its priority by that time. The rest of taskflow_finish_jobs is as in 0002.

CREATE OR REPLACE FUNCTION taskflow_finish_jobs(
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
                     ELSE 'queued' END::job_state,
        run_at = CASE WHEN j.state = 'blocked' AND j.pending_upstreams - l.n = 0
                      THEN greatest(j.run_at, now()) ELSE j.run_at END
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
