-- What keeps the Redis dispatch index honest without passes over the whole backlog.
--
-- dispatch_index: the generation of the index this database was indexed into. Redis keeps
-- the same generation in its epoch key; a Redis without it (new, flushed, restarted
-- empty) whose database has a generation has lost its index and is rebuilt. A database
-- with no generation yet and no waiting job is a new deployment: the first process claims
-- it, and nothing is rebuilt for an index that is fine.
CREATE TABLE dispatch_index (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    generation uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- jobs_unindexed: jobs committed as dispatchable whose Redis enqueue has not been
-- confirmed. Written in the statement that creates them (so a process killed between the
-- commit and the ZADD leaves its row), deleted in batches once Redis confirmed; the
-- reconciler indexes what is left. Its cost follows what is missing, not the backlog.
-- noted: 0 for the row the creating statement wrote (the submitter's confirmation deletes
-- only that one), counted up by every later note (a failed enqueue after a retry, a
-- settle...), so a confirmation or a reconciler pass never deletes a note it did not see.
CREATE TABLE jobs_unindexed (
    job_id uuid PRIMARY KEY,
    since  timestamptz NOT NULL DEFAULT now(),
    noted  integer NOT NULL DEFAULT 0
);
