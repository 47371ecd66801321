-- Every query taskflow sends to PostgreSQL, as named blocks ("-- name: <name>").
-- Each state change is guarded by the state it leaves (and, for running jobs, by the
-- attempt's lease token): zero rows back means the caller lost a race and writes nothing.

-- name: migrations_lock
SELECT pg_advisory_lock($1);

-- name: migrations_unlock
SELECT pg_advisory_unlock($1);

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    sha256     text NOT NULL,  -- of the file as applied: a released migration never changes
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version, name, sha256 FROM schema_migrations;

-- name: migrations_record
INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3);

-- name: insert_jobs
-- A batch of new jobs in one statement. A job whose (tenant, idempotency_key) exists
-- already is skipped; the caller reads the existing one with jobs_by_idempotency_key.
-- A job waits ('blocked') while upstream jobs have not succeeded, and is born cancelled
-- when one of them has failed or been cancelled already. Dispatchable ones are noted in
-- jobs_unindexed in the same statement, until their enqueue is confirmed.
WITH created AS (
INSERT INTO jobs (id, tenant, task, queue, payload, priority, run_at, state, max_attempts,
                  retry_policy, timeout, idempotency_key, labels, upstream_count,
                  pending_upstreams, has_dependents, workflow_id, node, cancelled_by, error,
                  finished_at, notify)
SELECT t.id, t.tenant, t.task, t.queue, t.payload::jsonb, t.priority, due.run_at,
       CASE WHEN t.cancelled_by IS NOT NULL THEN 'cancelled'
            WHEN t.pending > 0 THEN 'blocked'
            WHEN due.run_at > now() THEN 'scheduled'
            ELSE 'queued' END::job_state,
       t.max_attempts, t.retry_policy::jsonb, t.timeout, t.idempotency_key, t.labels::jsonb,
       t.upstream_count, t.pending, t.has_dependents, t.workflow_id, t.node, t.cancelled_by,
       t.error, CASE WHEN t.cancelled_by IS NOT NULL THEN now() END, t.notify::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
            $7::timestamptz[], $8::float8[], $9::int[], $10::text[], $11::float8[],
            $12::text[], $13::text[], $14::int[], $15::int[], $16::bool[], $17::uuid[],
            $18::text[], $19::uuid[], $20::text[], $21::text[])
     AS t(id, tenant, task, queue, payload, priority, run_at, delay, max_attempts,
          retry_policy, timeout, idempotency_key, labels, upstream_count, pending,
          has_dependents, workflow_id, node, cancelled_by, error, notify)
CROSS JOIN LATERAL (
    SELECT coalesce(t.run_at, now() + make_interval(secs => coalesce(t.delay, 0))) AS run_at
) AS due
ON CONFLICT ON CONSTRAINT jobs_idempotency DO NOTHING
RETURNING id, queue, priority, run_at, state, created_at
), unconfirmed AS (
    -- until Redis confirms the enqueue (see migration 0004)
    INSERT INTO jobs_unindexed (job_id)
    SELECT id FROM created WHERE state IN ('queued', 'scheduled')
)
SELECT * FROM created;

-- name: created_jobs
-- After an insert that failed in a way that may have come after its commit: what it made.
SELECT id, tenant, task, queue, priority, run_at, state, created_at FROM jobs
WHERE id = ANY($1::uuid[]);

-- name: lock_upstreams
-- Marks jobs as having dependents and returns their current state. The row lock makes a
-- concurrent completion of one of them wait for this transaction, or this transaction
-- wait for it: either way the new edges and the completion see each other.
-- Locked in id order so that concurrent submits sharing upstreams cannot deadlock.
WITH locked AS (
    SELECT id FROM jobs WHERE id = ANY($1::uuid[]) AND tenant = $2
    ORDER BY id FOR NO KEY UPDATE
)
UPDATE jobs AS j SET has_dependents = true
FROM locked WHERE j.id = locked.id
RETURNING j.id, j.state;

-- name: insert_dependencies
INSERT INTO job_dependencies (upstream_id, job_id)
SELECT * FROM unnest($1::uuid[], $2::uuid[]);

-- name: insert_workflow
INSERT INTO workflows (id, tenant, name) VALUES ($1, $2, $3) RETURNING *;

-- name: get_workflow
SELECT * FROM workflows WHERE id = $1;

-- name: workflow_jobs
SELECT * FROM jobs WHERE workflow_id = $1 ORDER BY id;

-- name: workflow_entries
-- What a new workflow indexes: its jobs that wait on nothing (its roots), without their
-- payloads.
SELECT id, queue, priority, run_at, state FROM jobs
WHERE workflow_id = $1 AND state IN ('queued', 'scheduled');

-- name: upstream_results
-- Results of the direct upstream jobs of a batch of started jobs, in one query, within a
-- budget of $2 bytes per job: once a job's running total passes it, its rows say so
-- (over) and carry no result, so a fan-in of thousands of large results is never loaded.
-- Every row is reached by key: the OFFSET 0 fences keep the planner from flattening the
-- lateral lookups into a join that it would hash over whole scans of both tables when
-- their statistics lag behind a big workflow just inserted (3 ms instead of 0.2 for the
-- 100 jobs of one layer at 10,000 jobs, growing with the tables).
SELECT job_id, id, node, CASE WHEN NOT over THEN result END AS result, over, loaded
FROM (
    SELECT s.job_id, u.id, u.node, u.text AS result,
           coalesce(sum(octet_length(u.text)) OVER w, 0) AS loaded,
           coalesce(sum(octet_length(u.text)) OVER w, 0) > $2 AS over
    FROM unnest($1::uuid[]) AS s(job_id)
    CROSS JOIN LATERAL (SELECT d.upstream_id FROM job_dependencies AS d
                        WHERE d.job_id = s.job_id OFFSET 0) AS d
    CROSS JOIN LATERAL (SELECT u.id, u.node, u.result::text AS text FROM jobs AS u
                        WHERE u.id = d.upstream_id OFFSET 0) AS u
    WINDOW w AS (PARTITION BY s.job_id ORDER BY u.id)
) AS s;

-- name: jobs_by_idempotency_key
SELECT * FROM jobs WHERE tenant = $1 AND idempotency_key = ANY($2::text[]);

-- name: get_job
SELECT * FROM jobs WHERE id = $1;

-- name: get_jobs
SELECT * FROM jobs WHERE id = ANY($1::uuid[]);

-- name: job_attempts
SELECT * FROM job_attempts WHERE job_id = $1 ORDER BY id;

-- name: jobs_attempts
-- The finished attempts of several jobs, each job's in the order they ended.
SELECT * FROM job_attempts WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, id;

-- name: start_jobs
-- queued|scheduled -> running for a batch of claims, each with its own lease token.
-- Jobs that left those states since Redis indexed them (cancelled, already done) are not
-- returned; the worker gives their leases back.
UPDATE jobs AS j
SET state = 'running', attempts = j.attempts + 1, lease_token = c.token,
    worker = $3, started_at = now()
FROM unnest($1::uuid[], $2::text[]) AS c(id, token)
WHERE j.id = c.id AND j.state IN ('queued', 'scheduled') AND NOT j.cancel_requested
RETURNING j.id, j.task, j.queue, j.payload::text AS payload, j.priority, j.attempts,
          j.max_attempts, j.retry_policy::text AS retry_policy, j.timeout, j.lease_token,
          j.tenant, j.upstream_count, j.run_at, j.has_dependents, j.node;

-- name: finish_jobs
-- Ends a batch of running attempts in one round trip (taskflow_finish_jobs, migration
-- 0002): each row names the state the job moves to (succeeded, scheduled or queued for a
-- retry, failed, cancelled) and the attempt's outcome. The token guard fences off workers
-- whose lease was taken over. A retry of a job whose cancellation was requested ends it
-- cancelled instead. Also returns the dependents it released or cancelled.
SELECT * FROM taskflow_finish_jobs($1::uuid[], $2::text[], $3::job_state[], $4::text[],
                                   $5::text[], $6::float8[], $7::text[], $8::float8[]);

-- name: finish_and_start
-- finish_jobs, and the start of released dependents by the calling worker: of those due
-- now in queues $9, up to $10 move straight to running under worker $11 with lease tokens
-- $12 || n (taskflow_finish_and_start, migration 0008). Started rows have a lease_token.
SELECT * FROM taskflow_finish_and_start($1::uuid[], $2::text[], $3::job_state[],
                                        $4::text[], $5::text[], $6::float8[], $7::text[],
                                        $8::float8[], $9::text[], $10::integer, $11::text,
                                        $12::text);

-- name: started_by_flush
-- The jobs a flush whose commit went unconfirmed may have started: running dependents of
-- its jobs ($1) that hold a token with its prefix ($2). Reached by key (the edges of the
-- flushed jobs), whatever the backlog.
SELECT j.id, j.lease_token FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.job_id
WHERE d.upstream_id = ANY ($1::uuid[]) AND j.state = 'running'
  AND starts_with(j.lease_token, $2);

-- name: unstart_jobs
-- running -> queued for attempts that never ran: dependents a worker's flush started for
-- it (taskflow_finish_and_start) when the flush's commit went unanswered, so the worker
-- never ran them. No attempt is spent or recorded, and they keep their place in line.
-- A job whose cancellation was requested meanwhile ends cancelled (and the caller cancels
-- its dependents: has_dependents, see PostgresStore._end_running).
UPDATE jobs AS j
SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END::job_state,
    attempts = j.attempts - 1, lease_token = NULL,
    finished_at = CASE WHEN j.cancel_requested THEN now() END,
    error = CASE WHEN j.cancel_requested THEN 'cancelled before it ran' END
FROM unnest($1::uuid[], $2::text[]) AS b(id, token)
WHERE j.id = b.id AND j.state = 'running' AND j.lease_token = b.token
RETURNING j.id, j.queue, j.priority, j.run_at, j.state, j.has_dependents;

-- name: hand_back_jobs
-- running -> queued without spending an attempt: the worker is shutting down and did not
-- finish these in its grace period. A job whose cancellation was requested ends
-- cancelled instead (its worker stopped it, in effect).
WITH back AS (
    SELECT * FROM unnest($1::uuid[], $2::text[]) AS b(id, token)
), moved AS (
    UPDATE jobs AS j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END::job_state,
        attempts = CASE WHEN j.cancel_requested THEN j.attempts ELSE j.attempts - 1 END,
        finished_at = CASE WHEN j.cancel_requested THEN now() END,
        error = CASE WHEN j.cancel_requested THEN 'cancelled while running' END,
        lease_token = NULL, run_at = now()
    FROM back AS b
    WHERE j.id = b.id AND j.state = 'running' AND j.lease_token = b.token
    RETURNING j.id, j.queue, j.priority, j.run_at, j.state, j.attempts, j.worker,
              j.started_at, j.has_dependents
), recorded AS (
    INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at, outcome,
                              error)
    SELECT id, CASE WHEN state = 'cancelled' THEN attempts ELSE attempts + 1 END, worker,
           started_at, now(),
           CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'handed_back' END,
           'worker shut down before the job finished; handed back'
    FROM moved
)
SELECT id, queue, priority, run_at, state, has_dependents FROM moved;

-- name: rescue_jobs
-- running -> queued (or failed when no attempt is left) for attempts whose lease expired:
-- the worker crashed, froze or lost Redis. The lost attempt counts against max_attempts,
-- so a job that kills its worker every time ends failed instead of looping. A job whose
-- cancellation was requested ends cancelled: it must not run again.
WITH lost AS (
    SELECT * FROM unnest($1::uuid[], $2::text[]) AS l(id, token)
), moved AS (
    UPDATE jobs AS j
    SET state = CASE WHEN j.cancel_requested THEN 'cancelled'
                     WHEN j.attempts >= j.max_attempts THEN 'failed'
                     ELSE 'queued' END::job_state,
        error = 'lease expired: the worker running attempt ' || j.attempts
                || ' stopped heartbeating (crashed, froze or lost Redis)',
        finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                           THEN now() END,
        run_at = now(), lease_token = NULL
    FROM lost AS l
    WHERE j.id = l.id AND j.state = 'running' AND j.lease_token = l.token
    RETURNING j.id, j.queue, j.priority, j.run_at, j.state, j.attempts, j.worker,
              j.started_at, j.error, j.has_dependents
), recorded AS (
    INSERT INTO job_attempts (job_id, attempt, worker, started_at, finished_at, outcome,
                              error)
    SELECT id, attempts, worker, started_at, now(), 'lost', error FROM moved
)
SELECT id, queue, priority, run_at, state, has_dependents FROM moved;

-- name: cancel_dependents
-- Cancel the blocked descendants of jobs that ended failed or cancelled.
SELECT * FROM taskflow_cancel_dependents($1::uuid[], $2::job_state[]);

-- name: running_jobs_started_before
-- Candidates for the rescuer's PostgreSQL-side sweep: of the next $3 unfinished jobs after
-- id $2 (a keyset page of open_jobs, migration 0010, whatever their state), the attempts
-- running for longer than a lease. The page bounds each pass whatever the backlog:
-- filtering on state in the scan instead read every waiting job behind the few running
-- ones (there is no index on state, on purpose: see jobs_unfinished in 0001), a million
-- per pass under a backlog of a million. Every row has the page's last id and size (a
-- page with no candidate is one row of NULLs but for them), so the sweep goes round all
-- unfinished jobs over its passes.
-- Here and in every other reader of open_jobs, the jobs row of each open_jobs row is
-- looked up by primary key, in a LATERAL subquery whose LIMIT keeps the planner from
-- pulling it up into a join: as a plain join it merge-joined from the first id of jobs,
-- or hashed all of it, for every page (a rebuild of 977,510 jobs took 80 s instead of 15).
WITH page AS MATERIALIZED (
    SELECT j.id, j.queue, j.lease_token, j.state, j.started_at
    FROM (SELECT id FROM open_jobs WHERE id > $2 ORDER BY id LIMIT $3) AS o
    CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = o.id LIMIT 1) AS j
)
SELECT last.id AS last_id, last.n AS scanned, p.id, p.queue, p.lease_token
FROM (SELECT (SELECT id FROM page ORDER BY id DESC LIMIT 1) AS id,
             (SELECT count(*) FROM page) AS n) AS last
LEFT JOIN page AS p
       ON p.state = 'running' AND p.started_at < now() - make_interval(secs => $1);

-- name: running_attempts
-- Which of these attempts PostgreSQL still says are running (by lease token), and whether
-- their cancellation was requested: a worker that took a lost lease back, or found a
-- cancel marker, asks before it trusts Redis.
SELECT j.id, j.cancel_requested
FROM jobs AS j JOIN unnest($1::uuid[], $2::text[]) AS c(id, token) ON j.id = c.id
WHERE j.state = 'running' AND j.lease_token = c.token;

-- name: dispatchable_jobs
-- The jobs among these that belong in the dispatch index (the reaper requeues those a
-- worker claimed in Redis but never started: it died in between).
SELECT id, queue, priority, run_at, state FROM jobs
WHERE id = ANY($1::uuid[]) AND state IN ('queued', 'scheduled');

-- name: index_generation
SELECT generation FROM dispatch_index;

-- name: claim_index_generation
-- The first process of a new deployment names the index generation. Returns the
-- generation that stands, and whether this call made it and no job waits (so the empty
-- Redis it is looking at holds a complete index: there is nothing to put in it).
WITH made AS (
    INSERT INTO dispatch_index (generation) VALUES ($1)
    ON CONFLICT (id) DO NOTHING
    RETURNING generation
)
SELECT coalesce((SELECT generation FROM made), (SELECT generation FROM dispatch_index))
           AS generation,
       EXISTS (SELECT 1 FROM made)
       AND NOT EXISTS (SELECT 1 FROM open_jobs AS o
                       CROSS JOIN LATERAL (SELECT 1 FROM jobs WHERE jobs.id = o.id
                                           AND jobs.state IN ('queued', 'scheduled')
                                           LIMIT 1) AS j)
           AS fresh;

-- name: confirm_indexed
-- The submitter's confirmation: only the note its own insert wrote (noted = 0).
DELETE FROM jobs_unindexed WHERE job_id = ANY($1::uuid[]) AND noted = 0;

-- name: vacuum_unindexed
-- Dead notes go (see PostgresStore._vacuum_notes); a vacuum already at it is not waited for.
VACUUM (SKIP_LOCKED) jobs_unindexed;

-- name: note_unindexed
INSERT INTO jobs_unindexed (job_id, noted) SELECT unnest($1::uuid[]), 1
ON CONFLICT (job_id) DO UPDATE SET noted = jobs_unindexed.noted + 1, since = now();

-- name: clear_unindexed
-- The reconciler indexed these notes: each goes unless it was noted again meanwhile.
DELETE FROM jobs_unindexed AS u
USING unnest($1::uuid[], $2::int[]) AS c(job_id, noted)
WHERE u.job_id = c.job_id AND u.noted = c.noted;

-- name: list_unindexed
-- Up to $2 jobs whose enqueue was not confirmed within $1 seconds (oldest first), and,
-- for those still dispatchable, what Redis needs. The caller indexes them, then deletes
-- the notes (clear_unindexed); a crash in between only repeats the work.
SELECT u.job_id, u.noted, j.queue, j.priority, j.run_at, j.state
FROM (SELECT job_id, noted FROM jobs_unindexed
      WHERE since < now() - make_interval(secs => $1)
      ORDER BY since LIMIT $2) AS u
LEFT JOIN jobs AS j ON j.id = u.job_id;

-- name: dispatchable_jobs_page
-- Keyset page of the jobs that belong in the Redis dispatch index (reconciler), read in
-- the order of open_jobs (migration 0010), each jobs row by primary key (see
-- running_jobs_started_before).
SELECT j.id, j.queue, j.priority, j.run_at, j.state
FROM open_jobs AS o
CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = o.id
                    AND jobs.state IN ('queued', 'scheduled') LIMIT 1) AS j
WHERE o.id > $1
ORDER BY o.id
LIMIT $2;

-- name: get_tenant_job
-- A job as its tenant sees it ($2 NULL: any tenant, for operators).
SELECT * FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2);

-- name: list_jobs
-- Newest first, keyset-paged on the time-ordered id. Every filter is optional (NULL),
-- the tenant ($1) too: NULL only for an operator's cross-tenant list. Plans are made per
-- execution (custom plans), so the NULL tests fold away and a tenant's listing uses the
-- (tenant, id) index. $6 is a jsonb object of labels the job must all carry. Payload and
-- result are read only when asked for ($10, $11): a page of 1,000 jobs with large results
-- would otherwise read (and de-TOAST) them all.
SELECT id, tenant, task, queue, CASE WHEN $10::bool THEN payload END AS payload, priority,
       run_at, state, attempts, max_attempts, retry_policy, timeout, idempotency_key, labels,
       CASE WHEN $11::bool THEN result END AS result, error, created_at, started_at,
       finished_at, lease_token, worker, cancel_requested, workflow_id, node, upstream_count,
       pending_upstreams, has_dependents, cancelled_by
FROM jobs
WHERE ($1::text IS NULL OR tenant = $1)
  AND ($2::uuid IS NULL OR id < $2)
  AND ($3::job_state[] IS NULL OR state = ANY($3))
  AND ($4::text IS NULL OR queue = $4)
  AND ($5::text IS NULL OR task = $5)
  AND ($6::text IS NULL OR labels @> $6::jsonb)
  AND ($7::timestamptz IS NULL OR created_at >= $7)
  AND ($8::timestamptz IS NULL OR created_at < $8)
ORDER BY id DESC
LIMIT $9;

-- name: cancel_waiting_job
-- blocked|scheduled|queued -> cancelled at once. Its Redis entry, if any, stays: claiming
-- skips jobs that are no longer queued (start_jobs) and gives the lease back.
UPDATE jobs
SET state = 'cancelled', finished_at = now(), error = 'cancelled by request',
    cancel_requested = true
WHERE id = $1 AND tenant = $2 AND state IN ('blocked', 'scheduled', 'queued')
RETURNING *;

-- name: request_running_job_cancel
-- A running job is only flagged here; its worker stops the handler and records the
-- attempt and the job as cancelled (finish_jobs), fenced by its lease token as usual.
UPDATE jobs
SET cancel_requested = true
WHERE id = $1 AND tenant = $2 AND state = 'running'
RETURNING *;

-- name: retry_job
-- failed|cancelled -> queued, due now, with at least one attempt left (attempt numbers
-- keep counting up, so the history in job_attempts stays in order); -> blocked instead
-- while some of its upstream jobs have not succeeded. Not while an upstream has failed or
-- been cancelled: nothing would ever release it (retry that upstream: it releases this).
UPDATE jobs
SET state = CASE WHEN pending_upstreams > 0 THEN 'blocked' ELSE 'queued' END::job_state,
    run_at = now(), max_attempts = greatest(max_attempts, attempts + 1),
    finished_at = NULL, result = NULL, error = NULL, cancel_requested = false,
    cancelled_by = NULL
WHERE id = $1 AND tenant = $2 AND state IN ('failed', 'cancelled')
  AND NOT EXISTS (
      SELECT 1 FROM job_dependencies AS d JOIN jobs AS u ON u.id = d.upstream_id
      WHERE d.job_id = $1 AND u.state IN ('failed', 'cancelled'))
RETURNING *;

-- name: ended_upstreams
-- A job's upstream jobs that ended failed or cancelled (why a retry was refused).
SELECT u.id FROM job_dependencies AS d JOIN jobs AS u ON u.id = d.upstream_id
WHERE d.job_id = $1 AND u.state IN ('failed', 'cancelled')
ORDER BY u.id;

-- name: revive_dependents
SELECT * FROM taskflow_revive_dependents($1);

-- name: cancel_workflow_jobs
-- Every unfinished job of a workflow, in one statement (so none slips between a state
-- it was not looked for in and one it was): waiting ones -> cancelled at once, running
-- ones flagged for their worker to stop (and any later rescue or hand-back to cancel).
UPDATE jobs
SET cancel_requested = true,
    state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END::job_state,
    finished_at = CASE WHEN state = 'running' THEN finished_at ELSE now() END,
    error = CASE WHEN state = 'running' THEN error ELSE 'cancelled with its workflow' END
WHERE workflow_id = $1 AND state IN ('blocked', 'scheduled', 'queued', 'running')
RETURNING id, queue, state, has_dependents;

-- name: get_tenant_workflow
SELECT * FROM workflows WHERE id = $1 AND ($2::text IS NULL OR tenant = $2);

-- name: workflow_job_views
-- A workflow's jobs as GET /workflows/{id} shows them: payload and result only when asked
-- for ($2, $3).
SELECT id, node, state, task, attempts, started_at, finished_at, error,
       CASE WHEN $2::bool THEN payload END AS payload,
       CASE WHEN $3::bool THEN result END AS result
FROM jobs WHERE workflow_id = $1 ORDER BY id;

-- name: count_active_jobs
-- Unfinished jobs of each (tenant, queue) pair, for tenant_limits.max_active. Each count
-- stops at $3 (the largest bound asked about), so its cost is bounded by the limit and
-- not by the tenant's backlog (open_jobs_tenant_queue, migration 0010).
SELECT k.tenant, k.queue,
       (SELECT count(*) FROM (SELECT 1 FROM open_jobs AS o
                              WHERE o.tenant = k.tenant AND o.queue = k.queue
                              LIMIT $3) AS s) AS active
FROM unnest($1::text[], $2::text[]) AS k(tenant, queue);

-- Notifications and dead letters (migration 0003). The outbox rows themselves are written
-- by triggers on jobs, in the statement that ends a job; these queries consume them.

-- name: outbox_register_sink
INSERT INTO outbox_sinks (name, backend) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET backend = EXCLUDED.backend, updated_at = now();

-- name: outbox_unregister_sink
DELETE FROM outbox_sinks WHERE name = $1;

-- name: outbox_claim
-- A batch of due rows for one notifier, of the channels it delivers ($4). SKIP LOCKED lets notifiers share the outbox; the
-- claim moves next_attempt_at to the claim's end, so the row is nobody else's until then,
-- and is claimed again if its notifier vanished. Attempts count at the claim: a row that
-- crashes its notifier every time still runs out of attempts.
WITH picked AS (
    SELECT id FROM outbox
    WHERE status = 'pending' AND next_attempt_at <= now() AND channel = ANY($4::text[])
    ORDER BY next_attempt_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE outbox AS o
    SET claim_token = $1, next_attempt_at = now() + make_interval(secs => $2),
        attempts = o.attempts + 1
    FROM picked WHERE o.id = picked.id
    RETURNING o.*
)
SELECT c.id, c.message_id, c.event, c.tenant, c.job_id, c.workflow_id, c.channel, c.target,
       c.subscription_id, c.body::text AS body, c.attempts, c.created_at,
       coalesce(s.secret, w.secret) AS secret,
       (c.subscription_id IS NULL OR s.id IS NOT NULL) AS subscribed
FROM claimed AS c
LEFT JOIN subscriptions AS s ON s.id = c.subscription_id
LEFT JOIN webhook_secrets AS w ON c.subscription_id IS NULL AND w.tenant = c.tenant
ORDER BY c.id;

-- name: outbox_extend_claim
-- Keeps rows a notifier is still delivering its own (a slow SMTP server, a slow receiver):
-- their claim is pushed to now + $3 while the token is still theirs.
UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $3)
WHERE id = ANY($1::bigint[]) AND claim_token = $2 AND status = 'pending';

-- name: outbox_settle
-- Records how each claimed row's attempt ended (delivered, retried after a delay,
-- failed for good, or handed back unattempted at shutdown), fenced by the claim token:
-- a notifier whose claim expired and was taken over writes nothing. A retry may narrow
-- the row's target (an email some recipients took already goes to the others alone).
WITH s AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[], $5::text[],
                         $6::text[])
        AS s(id, token, outcome, delay, error, target)
), moved AS (
    UPDATE outbox AS o
    SET status = CASE s.outcome WHEN 'delivered' THEN 'delivered'
                                WHEN 'failed' THEN 'failed' ELSE 'pending' END,
        next_attempt_at = CASE s.outcome
                              WHEN 'retried' THEN now() + make_interval(secs => s.delay)
                              WHEN 'handed_back' THEN now()
                              ELSE o.next_attempt_at END,
        attempts = CASE WHEN s.outcome = 'handed_back' THEN o.attempts - 1
                        ELSE o.attempts END,
        delivered_at = CASE WHEN s.outcome = 'delivered' THEN now() END,
        last_error = CASE WHEN s.outcome IN ('retried', 'failed') THEN s.error
                          ELSE o.last_error END,
        target = CASE WHEN s.outcome = 'retried' THEN coalesce(s.target, o.target)
                      ELSE o.target END,
        claim_token = NULL
    FROM s
    WHERE o.id = s.id AND o.claim_token = s.token AND o.status = 'pending'
    RETURNING o.id, o.attempts, s.outcome, s.error
), recorded AS (
    INSERT INTO outbox_attempts (outbox_id, attempt, outcome, error)
    SELECT id, CASE WHEN outcome = 'handed_back' THEN attempts + 1 ELSE attempts END,
           outcome, error
    FROM moved
)
SELECT id FROM moved;

-- name: outbox_next_due
-- Seconds until the earliest pending row of these channels is due (NULL: none pending).
SELECT extract(epoch FROM min(next_attempt_at) - now())::float8
FROM outbox WHERE status = 'pending' AND channel = ANY($1::text[]);

-- name: outbox_pending_stats
-- The backlog gauges: pending rows and the age of the oldest (its events wait longest).
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age
FROM outbox WHERE status = 'pending';

-- name: job_notifications
SELECT id, event, channel, target, status, attempts, last_error, created_at, delivered_at,
       subscription_id
FROM outbox WHERE job_id = $1 ORDER BY id;

-- name: ensure_webhook_secret
-- The tenant's signing secret, created with $2 if it has none.
WITH made AS (
    INSERT INTO webhook_secrets (tenant, secret) VALUES ($1, $2)
    ON CONFLICT (tenant) DO NOTHING
    RETURNING secret
)
SELECT secret FROM made
UNION ALL
SELECT secret FROM webhook_secrets WHERE tenant = $1
LIMIT 1;

-- name: rotate_webhook_secret
INSERT INTO webhook_secrets (tenant, secret) VALUES ($1, $2)
ON CONFLICT (tenant) DO UPDATE SET secret = EXCLUDED.secret, created_at = now()
RETURNING secret;

-- name: insert_subscription
INSERT INTO subscriptions (id, tenant, events, queue, task, webhook, email, secret)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *;

-- name: list_subscriptions
SELECT * FROM subscriptions
WHERE tenant = $1 AND ($2::uuid IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3;

-- name: delete_subscription
DELETE FROM subscriptions WHERE id = $1 AND tenant = $2 RETURNING id;

-- name: list_dead_letters
-- A tenant's terminal failures ($1 NULL: every tenant's, for operators), newest first,
-- keyset-paged on the time-ordered id like list_jobs.
SELECT * FROM jobs
WHERE ($1::text IS NULL OR tenant = $1) AND state = 'failed'
  AND ($2::uuid IS NULL OR id < $2)
  AND ($3::text IS NULL OR queue = $3)
  AND ($4::text IS NULL OR task = $4)
  AND ($5::text IS NULL OR strpos(error, $5) > 0)
  AND ($6::timestamptz IS NULL OR finished_at >= $6)
  AND ($7::timestamptz IS NULL OR finished_at < $7)
ORDER BY id DESC
LIMIT $8;

-- name: redrive_jobs
-- failed -> queued (blocked while upstreams are unfinished) with a fresh budget of the
-- job's own attempts (max_attempts - attempt_base); attempt numbers keep counting up, so
-- the history in job_attempts stays. Jobs no longer failed are skipped.
UPDATE jobs
SET state = CASE WHEN pending_upstreams > 0 THEN 'blocked' ELSE 'queued' END::job_state,
    run_at = now(), max_attempts = attempts + max_attempts - attempt_base,
    attempt_base = attempts, finished_at = NULL, result = NULL, error = NULL,
    cancel_requested = false, cancelled_by = NULL
WHERE id = ANY($1::uuid[]) AND tenant = $2 AND state = 'failed'
RETURNING id, queue, priority, run_at, state, has_dependents;

-- name: blocked_counts
-- Jobs waiting on their upstreams, by queue, for the metrics (taskflow.stats). At most $1
-- unfinished jobs are looked at (open_jobs, oldest first), so a refresh costs the same
-- whatever the backlog; beyond that the counts are lower bounds.
SELECT j.queue, count(*) FILTER (WHERE j.state = 'blocked')::int AS blocked
FROM (SELECT id FROM open_jobs ORDER BY id LIMIT $1) AS o
CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = o.id LIMIT 1) AS j
GROUP BY j.queue;

-- name: queue_backlog
-- Jobs waiting by queue for GET /queues ($1 NULL: every tenant's): the oldest $2
-- unfinished jobs that are not running, read oldest first (through open_jobs, or
-- open_jobs_tenant_id for one tenant, migration 0010; the branch whose one-time filter
-- is false reads nothing), so the oldest ready job is in the sample and queues
-- get their share by age. A scheduled job that is due counts as ready (a worker promotes
-- it when it claims). Running jobs are counted apart (running_jobs). The caller asks for
-- one row more than it reports, to tell a full count from a capped one.
SELECT queue,
       count(*) FILTER (WHERE state = 'queued'
                        OR (state = 'scheduled' AND run_at <= now()))::int AS ready,
       count(*) FILTER (WHERE state = 'scheduled' AND run_at > now())::int AS scheduled,
       count(*) FILTER (WHERE state = 'blocked')::int AS blocked,
       min(run_at) FILTER (WHERE state IN ('queued', 'scheduled')
                           AND run_at <= now()) AS oldest_ready_due,
       count(*)::int AS counted
FROM ((SELECT j.queue, j.state, j.run_at FROM open_jobs AS o
       CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = o.id
                           AND jobs.state <> 'running' LIMIT 1) AS j
       WHERE $1::text IS NULL
       ORDER BY o.id LIMIT $2)
      UNION ALL
      (SELECT j.queue, j.state, j.run_at FROM open_jobs AS o
       CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = o.id
                           AND jobs.state <> 'running' LIMIT 1) AS j
       WHERE o.tenant = $1
       ORDER BY o.tenant, o.id LIMIT $2)) AS unfinished
GROUP BY queue;

-- name: running_jobs
-- Of the jobs $2 (those in the queues' in-flight sets in Redis: no more than the workers
-- run at once), the running ones by queue and by worker (the rows of the (worker)
-- grouping set), looked up by primary key; $1 NULL: every tenant's.
SELECT GROUPING(queue) = 1 AS by_worker, queue, worker, count(*)::int AS running
FROM jobs
WHERE id = ANY($2::uuid[]) AND state = 'running' AND ($1::text IS NULL OR tenant = $1)
GROUP BY GROUPING SETS ((queue), (worker));

-- name: finished_by_minute
-- Jobs that ended in [$2, $3), by queue, minute and final state ($1 NULL: every tenant's),
-- found through job_ends (every tenant's, or one tenant's; migration 0010; the branch
-- whose one-time filter is false reads nothing). The job's own finished_at decides: a job
-- redriven and ended again has a job_ends row per end, and only its last end counts, once.
-- The API reads a few minutes at a time and keeps the closed ones (taskflow.api.ended),
-- so its cost follows the rate.
SELECT j.queue, date_trunc('minute', j.finished_at) AS minute, j.state::text AS state,
       count(*)::int AS n
FROM (SELECT DISTINCT e.job_id
      FROM ((SELECT job_id FROM job_ends
             WHERE $1::text IS NULL AND finished_at >= $2 AND finished_at < $3)
            UNION ALL
            (SELECT job_id FROM job_ends
             WHERE tenant = $1 AND finished_at >= $2 AND finished_at < $3)) AS e) AS e
CROSS JOIN LATERAL (SELECT * FROM jobs WHERE jobs.id = e.job_id
                    AND jobs.finished_at >= $2 AND jobs.finished_at < $3 LIMIT 1) AS j
GROUP BY j.queue, minute, j.state;

-- name: list_workflows
-- Workflows newest first, keyset-paged on the time-ordered id ($1 NULL: every tenant's),
-- each with at most $4 of its jobs counted by state, so a page costs at most its size
-- times $4 rows whatever the workflows' sizes (the caller asks for one more than it
-- shows, to tell a full count from a capped one), and whether any job is unfinished
-- (through open_jobs_workflow, migration 0010: one probe).
SELECT w.id, w.tenant, w.name, w.created_at, c.total, c.unfinished, c.succeeded, c.failed,
       c.unfinished > 0 OR EXISTS (SELECT 1 FROM open_jobs AS u WHERE u.workflow_id = w.id)
           AS running
FROM (SELECT * FROM workflows
      WHERE ($1::text IS NULL OR tenant = $1) AND ($2::uuid IS NULL OR id < $2)
      ORDER BY id DESC LIMIT $3) AS w
CROSS JOIN LATERAL (
    SELECT count(*)::int AS total,
           count(*) FILTER (WHERE j.finished_at IS NULL)::int AS unfinished,
           count(*) FILTER (WHERE j.state = 'succeeded')::int AS succeeded,
           count(*) FILTER (WHERE j.state = 'failed')::int AS failed
    FROM (SELECT state, finished_at FROM jobs WHERE workflow_id = w.id LIMIT $4) AS j) AS c
ORDER BY w.id DESC;

-- name: workflow_edges
-- A workflow's dependency edges (upstream job -> dependent job).
SELECT d.upstream_id, d.job_id
FROM jobs AS j JOIN job_dependencies AS d ON d.job_id = j.id
WHERE j.workflow_id = $1;

-- name: job_links
-- A job's direct upstream (direction 'up') and downstream ('down') jobs, at most $2 each.
(SELECT 'up' AS direction, j.id, j.task, j.state::text AS state, j.node
 FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.upstream_id
 WHERE d.job_id = $1 ORDER BY j.id LIMIT $2)
UNION ALL
(SELECT 'down', j.id, j.task, j.state::text, j.node
 FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.job_id
 WHERE d.upstream_id = $1 ORDER BY j.id LIMIT $2);
