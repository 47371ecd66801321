-- Flushes with generic plans. The pool plans every statement afresh
-- (plan_cache_mode = force_custom_plan, see taskflow.adapters.postgres.create_pool: a
-- generic plan cached while `jobs` was small is a sequential scan, and stays cached as
-- the table grows). Inside taskflow_finish_and_start that meant planning its two
-- statements that write jobs on every flush: ~0.7 ms of each flush's ~4 ms in a layered
-- DAG (pg_stat_statements with track_planning). Both reach every row by key, and the
-- release already pinned the keyed plan with enable_* settings; now both statements run
-- under those settings with one generic plan per connection, which the settings keep
-- keyed whatever the table's size when it was made. The rest is as in 0008,
-- but for the release under an IF, so that the settings are restored in one place.
--
-- The outbox trigger fires inside the first statement, so under those settings too: its
-- one join (the transition tables, new against old) becomes a hashed NOT IN, which no
-- setting turns into a nested loop over both (quadratic in the batch).

CREATE OR REPLACE FUNCTION taskflow_finish_and_start(
    ids uuid[], tokens text[], states job_state[], results text[], errors text[],
    delays float8[], outcomes text[], durations float8[],
    start_queues text[], seats integer, start_worker text, token_prefix text
) RETURNS TABLE (id uuid, queue text, priority integer, run_at timestamptz, state job_state,
                 task text, payload text, attempts integer, max_attempts integer,
                 retry_policy text, timeout double precision, lease_token text,
                 tenant text, upstream_count integer, has_dependents boolean, node text,
                 batch_upstreams uuid[], result text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    m_ids uuid[]; m_queues text[]; m_priorities integer[]; m_run_ats timestamptz[];
    m_states job_state[]; m_fanout boolean[]; m_results text[];
    ended_ids uuid[]; ended_states job_state[];
    saved_seqscan text := current_setting('enable_seqscan');
    saved_hashjoin text := current_setting('enable_hashjoin');
    saved_mergejoin text := current_setting('enable_mergejoin');
    saved_plan_mode text := current_setting('plan_cache_mode');
BEGIN
    -- Both statements that write jobs reach every row by key (the batch's jobs by id,
    -- then their edges and dependents), so index lookups in nested loops are the right
    -- plan at any size, and one generic plan serves every call (see the top of this
    -- file). The settings keep that plan keyed: the planner, misjudging the release's
    -- intermediate sizes (200 groups where there is one), would otherwise hash-join whole
    -- scans of jobs and job_dependencies (3 ms per release at 10,000 jobs, and growing
    -- with the tables), and a generic plan made on a small table would scan it. For these
    -- two statements (and the trigger the first fires) alone: restored on the way out.
    PERFORM set_config('plan_cache_mode', 'force_generic_plan', true),
            set_config('enable_seqscan', 'off', true),
            set_config('enable_hashjoin', 'off', true),
            set_config('enable_mergejoin', 'off', true);
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
                  j.started_at, j.has_dependents, d.duration, d.outcome, d.error,
                  j.result
    ), recorded AS (
        INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at,
                                  duration, outcome, error)
        SELECT m.id, m.attempts, m.worker, m.started_at, now(), m.duration,
               CASE WHEN m.state = 'cancelled' THEN 'cancelled' ELSE m.outcome END, m.error
        FROM moved AS m
    )
    SELECT coalesce(array_agg(m.id), '{}'), array_agg(m.queue), array_agg(m.priority),
           array_agg(m.run_at), array_agg(m.state), array_agg(m.has_dependents),
           array_agg(CASE WHEN seats > 0 AND m.has_dependents AND m.state = 'succeeded'
                          THEN m.result::text END)
    INTO m_ids, m_queues, m_priorities, m_run_ats, m_states, m_fanout, m_results
    FROM moved AS m;

    RETURN QUERY SELECT u.id, u.queue, u.priority, u.run_at, u.state, NULL::text, NULL::text,
                        NULL::integer, NULL::integer, NULL::text, NULL::double precision,
                        NULL::text, NULL::text, NULL::integer, NULL::boolean, NULL::text,
                        NULL::uuid[], u.result
    FROM unnest(m_ids, m_queues, m_priorities, m_run_ats, m_states, m_results)
         AS u(id, queue, priority, run_at, state, result);
    IF true = ANY (m_fanout) THEN  -- some have dependents (commonly none has)
        -- Release: one decrement per (dependent, succeeded upstream) edge. The count stays
        -- true for dependents cancelled meanwhile too (a retry may revive them), but only
        -- blocked ones move. Dependents are locked in id order so that concurrent flushes
        -- cannot deadlock on them.
        RETURN QUERY
        WITH succeeded AS (
            SELECT u.id FROM unnest(m_ids, m_states, m_fanout) AS u(id, state, fanout)
            WHERE u.state = 'succeeded' AND u.fanout
        ), counts AS (
            SELECT d.job_id, count(*)::integer AS n, array_agg(d.upstream_id) AS ups
            FROM succeeded AS s JOIN job_dependencies AS d ON d.upstream_id = s.id
            GROUP BY d.job_id
        ), locked AS (
            SELECT j.id, c.n, c.ups, j.priority AS rank_priority,
                   j.state = 'blocked' AND j.pending_upstreams = c.n AND NOT j.cancel_requested
                   AND j.run_at <= clock_timestamp() AND j.queue = ANY (start_queues) AS startable
            FROM counts AS c JOIN jobs AS j ON j.id = c.job_id
            WHERE j.state IN ('blocked', 'cancelled') ORDER BY j.id FOR NO KEY UPDATE OF j
        ), seated AS (
            SELECT l.id, l.n, l.ups,
                   CASE WHEN l.startable THEN row_number() OVER (
                       PARTITION BY l.startable ORDER BY l.rank_priority DESC, l.id) END AS seat
            FROM locked AS l
        ), chosen AS (
            SELECT s.id, s.n, s.ups,
                   CASE WHEN s.seat <= seats THEN token_prefix || s.seat END AS token
            FROM seated AS s
        )
        UPDATE jobs AS j
        SET pending_upstreams = j.pending_upstreams - l.n,
            state = CASE WHEN j.state = 'cancelled' THEN 'cancelled'
                         WHEN j.pending_upstreams - l.n > 0 THEN 'blocked'
                         WHEN l.token IS NOT NULL THEN 'running'
                         WHEN j.run_at > clock_timestamp() THEN 'scheduled'
                         ELSE 'queued' END::job_state,
            run_at = CASE WHEN j.state = 'blocked' AND j.pending_upstreams - l.n = 0
                          THEN greatest(j.run_at, now()) ELSE j.run_at END,
            attempts = j.attempts + (l.token IS NOT NULL)::integer,
            lease_token = coalesce(l.token, j.lease_token),
            worker = CASE WHEN l.token IS NULL THEN j.worker ELSE start_worker END,
            started_at = CASE WHEN l.token IS NULL THEN j.started_at ELSE now() END
        FROM chosen AS l
        WHERE j.id = l.id AND j.state IN ('blocked', 'cancelled')
        RETURNING j.id, j.queue, j.priority, j.run_at, j.state,
                  CASE WHEN l.token IS NOT NULL THEN j.task END,
                  CASE WHEN l.token IS NOT NULL THEN j.payload::text END,
                  CASE WHEN l.token IS NOT NULL THEN j.attempts END,
                  CASE WHEN l.token IS NOT NULL THEN j.max_attempts END,
                  CASE WHEN l.token IS NOT NULL THEN j.retry_policy::text END,
                  CASE WHEN l.token IS NOT NULL THEN j.timeout END,
                  l.token,
                  CASE WHEN l.token IS NOT NULL THEN j.tenant END,
                  CASE WHEN l.token IS NOT NULL THEN j.upstream_count END,
                  CASE WHEN l.token IS NOT NULL THEN j.has_dependents END,
                  CASE WHEN l.token IS NOT NULL THEN j.node END,
                  CASE WHEN l.token IS NOT NULL THEN l.ups END, NULL::text;
    END IF;
    PERFORM set_config('plan_cache_mode', saved_plan_mode, true),
            set_config('enable_seqscan', saved_seqscan, true),
            set_config('enable_hashjoin', saved_hashjoin, true),
            set_config('enable_mergejoin', saved_mergejoin, true);

    SELECT array_agg(u.id), array_agg(u.state) INTO ended_ids, ended_states
    FROM unnest(m_ids, m_states, m_fanout) AS u(id, state, fanout)
    WHERE u.state IN ('failed', 'cancelled') AND u.fanout;
    IF ended_ids IS NOT NULL THEN
        RETURN QUERY SELECT c.*, NULL::text, NULL::text, NULL::integer, NULL::integer,
                            NULL::text, NULL::double precision, NULL::text, NULL::text,
                            NULL::integer, NULL::boolean, NULL::text, NULL::uuid[],
                            NULL::text
        FROM taskflow_cancel_dependents(ended_ids, ended_states) AS c;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION taskflow_outbox_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended uuid[]; failed boolean; notify boolean; tenants text[];
BEGIN
    -- The common cases first, without joining the transition tables: a statement that
    -- ends no job (claims, releases, retries), and a deployment where nobody consumes
    -- anything (no DLQ sink, no subscription, no job asking for a notification).
    IF NOT EXISTS (SELECT 1 FROM new_jobs AS n
                   WHERE n.state IN ('succeeded', 'failed', 'cancelled')) THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM outbox_sinks) AND NOT EXISTS (SELECT 1 FROM subscriptions)
       AND NOT EXISTS (SELECT 1 FROM new_jobs AS n WHERE n.notify IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(array_agg(n.id), '{}'), coalesce(bool_or(n.state = 'failed'), false),
           coalesce(bool_or(n.notify IS NOT NULL), false), array_agg(DISTINCT n.tenant)
    INTO ended, failed, notify, tenants
    FROM new_jobs AS n
    WHERE n.state IN ('succeeded', 'failed', 'cancelled')
      AND n.id NOT IN (SELECT o.id FROM old_jobs AS o
                       WHERE o.state IN ('succeeded', 'failed', 'cancelled'));
    IF taskflow_outbox_wanted(ended, failed, notify, tenants) THEN
        PERFORM taskflow_outbox_emit(ended);
    END IF;
    RETURN NULL;
END;
$$;
