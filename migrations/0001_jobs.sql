-- Jobs and their attempts: the source of truth for everything taskflow runs.

CREATE TYPE job_state AS ENUM (
    'blocked', 'scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'
);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,            -- UUIDv7: time-ordered
    tenant          text NOT NULL,
    task            text NOT NULL,
    queue           text NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}',
    priority        integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    run_at          timestamptz NOT NULL,        -- due time of the next attempt
    state           job_state NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,  -- attempts started so far
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    retry_policy    jsonb,                       -- per-job override of the task's policy
    timeout         double precision CHECK (timeout IS NULL OR timeout >= 0),
    idempotency_key text,
    labels          jsonb NOT NULL DEFAULT '{}',
    result          jsonb,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,                 -- start of the current or last attempt
    finished_at     timestamptz,
    lease_token     text,                        -- fencing token of the running attempt
    worker          text,                        -- worker of the current or last attempt
    cancel_requested boolean NOT NULL DEFAULT false,
    CONSTRAINT jobs_idempotency UNIQUE (tenant, idempotency_key)
) WITH (fillfactor = 50);  -- room on each page for HOT updates (see jobs_unfinished)

-- Unfinished jobs, for the reconciler (jobs that belong in Redis) and the rescuer
-- (running jobs). Deliberately not on `state`: an update that changes no indexed column
-- can be a HOT update (no index writes at all), and `state` changes on every transition,
-- while finished_at changes only once, at the end.
CREATE INDEX jobs_unfinished ON jobs (id) WHERE finished_at IS NULL;
-- Listing a tenant's jobs newest first, with keyset paging on the time-ordered id.
CREATE INDEX jobs_tenant_id ON jobs (tenant, id);

-- One row per finished attempt (running attempts are the job row's started_at/worker).
-- No foreign key to jobs, on purpose: PostgreSQL checks a foreign key with one query per
-- inserted row, which was 34 of the 42 ms it took to record 500 outcomes. The code is the
-- only writer (attempts are inserted by the statement that moves their job), and whatever
-- deletes jobs deletes their attempts with them.
CREATE TABLE job_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL,
    attempt     integer NOT NULL,
    worker      text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    duration    double precision,  -- seconds the handler ran, measured by the worker
    outcome     text NOT NULL CHECK (outcome IN
        ('succeeded', 'retried', 'failed', 'lost', 'handed_back', 'cancelled')),
    error       text
);
CREATE INDEX job_attempts_job ON job_attempts (job_id, id);

-- Room for later migrations: DAG edges (job_dependencies), notification settings and the
-- outbox are tables of their own that reference jobs(id); no column here presumes them.
