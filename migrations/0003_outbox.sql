-- Dead letters and notifications: a transactional outbox.
--
-- Every event that must leave the system (a dead letter for the broker, a webhook, an
-- email) is a row of `outbox`, written by triggers on `jobs` in the very statement that
-- ends the job. No code path can end a job and forget its event (worker flush, reaper
-- rescue, hand-back, cancel, the DAG cascade, a job born cancelled), and no event exists
-- for a state change that rolled back. `taskflow notify` claims the rows and delivers them.
--
-- Rows are written only when someone will consume them: a dead letter when a notifier
-- has registered a dead-letter sink (outbox_sinks), a notification when the job's own
-- `notify` or one of its tenant's subscriptions asks for that event. A job nobody listens
-- to costs one cheap check per statement, not per row.

-- The job's own notification request: {"on": [...], "webhook": url, "email": [...]}.
ALTER TABLE jobs
    ADD COLUMN notify jsonb,
    -- attempts spent before the last redrive: a redrive grants max_attempts - this many
    -- fresh attempts (the job's own budget), however many times it is redriven.
    ADD COLUMN attempt_base integer NOT NULL DEFAULT 0;

CREATE TABLE subscriptions (
    id         uuid PRIMARY KEY,
    tenant     text NOT NULL,
    events     text[] NOT NULL,
    queue      text,            -- NULL: any queue
    task       text,            -- NULL: any task
    webhook    text,
    email      text[],
    secret     text,            -- whsec_...: signs this subscription's webhooks
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((webhook IS NULL) <> (email IS NULL))
);
CREATE INDEX subscriptions_tenant ON subscriptions (tenant, id);

-- A tenant's signing secret for the webhooks its jobs name in `notify` (unless the
-- operator configured a global one, notify.webhook_secret).
CREATE TABLE webhook_secrets (
    tenant     text PRIMARY KEY,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Consumers registered by notifiers: a row 'dead_letters' while a DLQ backend is
-- configured (taskflow notify registers or removes it at start).
CREATE TABLE outbox_sinks (
    name       text PRIMARY KEY,
    backend    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      uuid NOT NULL DEFAULT gen_random_uuid(),  -- webhook-id: stable across retries
    event           text NOT NULL,           -- job.failed, workflow.succeeded, ...
    tenant          text NOT NULL,
    job_id          uuid,
    workflow_id     uuid,
    channel         text NOT NULL CHECK (channel IN ('dead_letter', 'webhook', 'email')),
    target          text,                    -- URL, or comma-separated addresses
    subscription_id uuid,                    -- NULL: the job's own notify (or a dead letter)
    body            jsonb NOT NULL,          -- the event's data as of the state change
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,   -- delivery attempts started
    -- When the row may be claimed: due now, after a retry's backoff, or when the claim of
    -- a notifier that vanished expires (a claim moves it to the claim's end).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claim_token     text,                    -- fences the settling of a claimed row
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_job ON outbox (job_id, id) WHERE job_id IS NOT NULL;

-- One row per delivery attempt, for the record (who tried, when, what happened).
CREATE TABLE outbox_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id   bigint NOT NULL,
    attempt     integer NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL CHECK (outcome IN ('delivered', 'retried', 'failed', 'handed_back')),
    error       text
);
CREATE INDEX outbox_attempts_row ON outbox_attempts (outbox_id, id);

-- The data of a job event: what a receiver needs to act on it without asking back.
CREATE FUNCTION taskflow_job_event_body(j jobs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', j.id, 'tenant', j.tenant, 'task', j.task, 'queue', j.queue,
        'state', j.state, 'payload', j.payload, 'labels', j.labels,
        'attempts', j.attempts, 'max_attempts', j.max_attempts, 'error', j.error,
        'result', j.result, 'worker', j.worker, 'started_at', j.started_at,
        'created_at', j.created_at, 'finished_at', j.finished_at,
        'workflow_id', j.workflow_id, 'node', j.node, 'cancelled_by', j.cancelled_by)
$$;

-- Writes the outbox rows of jobs that have just ended. Called by the triggers below, in
-- the statement that ended them (AFTER triggers see that statement's changes).
CREATE FUNCTION taskflow_outbox_emit(ended uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    dead_letters boolean;
    written bigint := 0;
    n bigint;
BEGIN
    dead_letters := EXISTS (SELECT 1 FROM outbox_sinks WHERE name = 'dead_letters');
    WITH j AS (
        SELECT jobs.*, 'job.' || jobs.state AS event, taskflow_job_event_body(jobs) AS body
        FROM jobs WHERE jobs.id = ANY (ended)
    ), wanted AS (
        SELECT j.event, j.tenant, j.id, j.workflow_id, 'dead_letter' AS channel,
               NULL AS target, NULL::uuid AS subscription_id, j.body
        FROM j WHERE dead_letters AND j.state = 'failed'
        UNION ALL
        SELECT j.event, j.tenant, j.id, j.workflow_id, 'webhook', j.notify ->> 'webhook',
               NULL, j.body
        FROM j WHERE j.notify ->> 'webhook' IS NOT NULL AND j.notify -> 'on' ? j.state::text
        UNION ALL
        SELECT j.event, j.tenant, j.id, j.workflow_id, 'email',
               (SELECT string_agg(a, ',') FROM jsonb_array_elements_text(j.notify -> 'email') a),
               NULL, j.body
        FROM j WHERE jsonb_array_length(coalesce(j.notify -> 'email', '[]')) > 0
                 AND j.notify -> 'on' ? j.state::text
        UNION ALL
        SELECT j.event, j.tenant, j.id, j.workflow_id,
               CASE WHEN s.webhook IS NOT NULL THEN 'webhook' ELSE 'email' END,
               coalesce(s.webhook, array_to_string(s.email, ',')), s.id, j.body
        FROM j JOIN subscriptions AS s
          ON s.tenant = j.tenant AND j.event = ANY (s.events)
         AND (s.queue IS NULL OR s.queue = j.queue) AND (s.task IS NULL OR s.task = j.task)
    )
    INSERT INTO outbox (event, tenant, job_id, workflow_id, channel, target,
                        subscription_id, body)
    SELECT * FROM wanted ORDER BY id;
    GET DIAGNOSTICS written = ROW_COUNT;

    -- Workflow events, when the tenant subscribes to them. The workflow rows are locked
    -- (in id order) before its jobs are counted, with a fresh snapshot: of two
    -- transactions ending a workflow's last two jobs, the second waits for the first and
    -- then sees both ended, so exactly one of them writes the event.
    IF EXISTS (
        SELECT 1 FROM jobs JOIN subscriptions AS s ON s.tenant = jobs.tenant
        WHERE jobs.id = ANY (ended) AND jobs.workflow_id IS NOT NULL
          AND s.events && ARRAY['workflow.succeeded', 'workflow.failed', 'workflow.cancelled']
    ) THEN
        PERFORM 1 FROM workflows
        WHERE id IN (SELECT workflow_id FROM jobs WHERE id = ANY (ended))
        ORDER BY id FOR NO KEY UPDATE;
        WITH done AS (
            SELECT w.id, w.tenant, w.name, w.created_at,
                   'workflow.' || CASE WHEN bool_or(j.state = 'failed') THEN 'failed'
                                       WHEN bool_and(j.state = 'succeeded') THEN 'succeeded'
                                       ELSE 'cancelled' END AS event,
                   count(*) AS jobs, max(j.finished_at) AS finished_at
            FROM workflows AS w JOIN jobs AS j ON j.workflow_id = w.id
            WHERE w.id IN (SELECT workflow_id FROM jobs WHERE id = ANY (ended))
            GROUP BY w.id
            HAVING bool_and(j.finished_at IS NOT NULL)
        )
        INSERT INTO outbox (event, tenant, workflow_id, channel, target, subscription_id,
                            body)
        SELECT d.event, d.tenant, d.id,
               CASE WHEN s.webhook IS NOT NULL THEN 'webhook' ELSE 'email' END,
               coalesce(s.webhook, array_to_string(s.email, ',')), s.id,
               jsonb_build_object('id', d.id, 'tenant', d.tenant, 'name', d.name,
                                  'state', substr(d.event, 10), 'jobs', d.jobs,
                                  'created_at', d.created_at, 'finished_at', d.finished_at)
        FROM done AS d JOIN subscriptions AS s
          ON s.tenant = d.tenant AND d.event = ANY (s.events);
        GET DIAGNOSTICS n = ROW_COUNT;
        written := written + n;
    END IF;

    IF written > 0 THEN
        PERFORM pg_notify('taskflow_outbox', '');  -- delivered at commit, wakes notifiers
    END IF;
END;
$$;

-- Whether any of the ended jobs has a consumer at all: one look at the transition rows
-- and two small tables, so a batch nobody listens to writes nothing and reads no job.
CREATE FUNCTION taskflow_outbox_wanted(ended uuid[], failed boolean, notify boolean,
                                       tenants text[]) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT cardinality(ended) > 0 AND (
        notify
        OR (failed AND EXISTS (SELECT 1 FROM outbox_sinks WHERE name = 'dead_letters'))
        OR EXISTS (SELECT 1 FROM subscriptions WHERE tenant = ANY (tenants)))
$$;

CREATE FUNCTION taskflow_outbox_after_update() RETURNS trigger
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
    FROM new_jobs AS n JOIN old_jobs AS o ON o.id = n.id
    WHERE n.state IN ('succeeded', 'failed', 'cancelled')
      AND o.state NOT IN ('succeeded', 'failed', 'cancelled');
    IF taskflow_outbox_wanted(ended, failed, notify, tenants) THEN
        PERFORM taskflow_outbox_emit(ended);
    END IF;
    RETURN NULL;
END;
$$;

-- A job can be born ended: cancelled because an upstream it names failed already.
CREATE FUNCTION taskflow_outbox_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended uuid[]; notify boolean; tenants text[];
BEGIN
    SELECT coalesce(array_agg(n.id), '{}'), coalesce(bool_or(n.notify IS NOT NULL), false),
           array_agg(DISTINCT n.tenant)
    INTO ended, notify, tenants
    FROM new_jobs AS n WHERE n.state = 'cancelled';
    IF taskflow_outbox_wanted(ended, false, notify, tenants) THEN
        PERFORM taskflow_outbox_emit(ended);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_outbox_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_outbox_after_update();
CREATE TRIGGER jobs_outbox_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_outbox_after_insert();
