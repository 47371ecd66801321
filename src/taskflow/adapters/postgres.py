"""PostgreSQL job store (asyncpg): the source of truth for every job and attempt."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from taskflow.adapters.sql import QUERIES
from taskflow.ids import uuid7
from taskflow.models import (
    Attempt, Claim, DispatchEntry, Job, NewJob, Outcome, StartedJob, UnknownUpstreams,
    Workflow, WorkflowMember, WorkflowNode,
)
from taskflow.states import JobState

log = logging.getLogger(__name__)

# Errors after which a write may or may not have committed (the connection broke, or the
# statement timed out while the server was finishing it).
MAYBE_COMMITTED: tuple[type[BaseException], ...] = (
    TimeoutError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.InternalClientError)

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def _json_text(value: Any) -> str:
    return _encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come back decoded; parameters are sent as text (see callers), so the
    # encoder is only a fallback for ad-hoc queries.
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=msgspec.json.decode, schema="pg_catalog"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool (see create_pool)."""


async def create_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, command_timeout: float | None = None
) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection,
        command_timeout=command_timeout,
        # Plan every execution with the table as it is now. A cached generic plan made
        # while `jobs` was small is a sequential scan joined to the batch, and it stays
        # cached as the table grows: 500 outcomes took 40 ms instead of 8 ms. (The
        # outcome flush's two writes use generic plans under settings that keep them on
        # the keys: migration 0009.)
        # random_page_cost: the hot rows are cached (or on SSD), so an index lookup is
        # nearly as cheap as a sequential read; with the default of 4 the planner scans
        # all of `jobs` to update a batch of 100 (a DAG layer's flush: 5.7 -> 2.7 ms).
        # jit: PostgreSQL compiles a query once its estimated cost passes jit_above_cost,
        # and a fan-in lookup planned while a big workflow's statistics lag behind is
        # estimated at 170,000 for 0.4 ms of work: compiling it took 15 ms, on every
        # call (a 100 x 100 layered workflow: 11 ms per upstream_results). Our
        # statements are all short, so JIT never pays here.
        server_settings={"plan_cache_mode": "force_custom_plan", "random_page_cost": "1.1",
                         "jit": "off"},
        # asyncpg's default reset on release is one more round trip (RESET ALL, UNLISTEN,
        # advisory unlock) per statement. Pooled connections keep no session state here:
        # queries are single statements or managed transactions, nothing LISTENs, and the
        # migration lock has a pool of its own.
        reset=_keep_session,
    )


def _entry(row: asyncpg.Record) -> DispatchEntry:
    return DispatchEntry(row["id"], row["queue"], row["priority"], row["run_at"],
                         JobState(row["state"]))


def _outcome_columns(outcomes: Sequence[Outcome]) -> list[list[Any]]:
    """The arrays taskflow_finish_jobs and taskflow_finish_and_start take, one per field."""
    return [[o.id for o in outcomes], [o.token for o in outcomes],
            [o.state.value for o in outcomes], [o.result for o in outcomes],
            [o.error for o in outcomes], [o.delay for o in outcomes],
            [o.outcome for o in outcomes], [o.duration for o in outcomes]]


def _job(row: asyncpg.Record) -> Job:
    return Job(**{**row, "state": JobState(row["state"])})


class JobQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters and the page position of :meth:`PostgresStore.list_jobs`."""

    limit: int
    before: uuid.UUID | None = None  # the last id of the previous page
    states: tuple[JobState, ...] = ()
    queue: str | None = None
    task: str | None = None
    labels: dict[str, str] = {}
    created_after: datetime | None = None
    created_before: datetime | None = None
    tenant: str | None = None  # only for cross-tenant listing
    # Payload and result are read only when asked for (they can be large); else None.
    with_payload: bool = False
    with_result: bool = False


class _Placement(msgspec.Struct):
    """Where a new job stands in the DAG when it is inserted."""

    upstream_count: int = 0
    pending: int = 0
    has_dependents: bool = False
    workflow_id: uuid.UUID | None = None
    node: str | None = None
    cancelled_by: uuid.UUID | None = None
    error: str | None = None

    def doom(self, upstream: uuid.UUID, state: JobState) -> None:
        if self.cancelled_by is None:
            self.cancelled_by = upstream
            self.error = f"cancelled because upstream job {upstream} ended {state.value}"


def _job_columns(jobs: Sequence[NewJob], dag: Sequence[_Placement] | None = None) -> list[list]:
    """The parameter arrays of insert_jobs, column by column."""
    dag = dag or [_Placement() for _ in jobs]
    return [
        [j.id for j in jobs],
        [j.tenant for j in jobs],
        [j.task for j in jobs],
        [j.queue for j in jobs],
        [_json_text(j.payload) for j in jobs],
        [j.priority for j in jobs],
        [j.run_at for j in jobs],
        [j.delay for j in jobs],
        [j.max_attempts for j in jobs],
        [None if j.retry_policy is None else _json_text(j.retry_policy) for j in jobs],
        [j.timeout for j in jobs],
        [j.idempotency_key for j in jobs],
        [_json_text(j.labels) for j in jobs],
        [p.upstream_count for p in dag],
        [p.pending for p in dag],
        [p.has_dependents for p in dag],
        [p.workflow_id for p in dag],
        [p.node for p in dag],
        [p.cancelled_by for p in dag],
        [p.error for p in dag],
        [None if j.notify is None else _json_text(j.notify) for j in jobs],
    ]


async def _lock_upstreams(
    conn: asyncpg.Connection, jobs: Sequence[NewJob]
) -> dict[tuple[str, uuid.UUID], JobState]:
    """Lock every job named in ``depends_on`` (per tenant) and return its state."""
    wanted: dict[str, set[uuid.UUID]] = {}
    for j in jobs:
        wanted.setdefault(j.tenant, set()).update(j.depends_on)
    states: dict[tuple[str, uuid.UUID], JobState] = {}
    missing: list[uuid.UUID] = []
    for tenant, ids in wanted.items():
        rows = await conn.fetch(QUERIES["lock_upstreams"], list(ids), tenant)
        found = {r["id"]: JobState(r["state"]) for r in rows}
        missing += sorted(i for i in ids if i not in found)
        states.update({(tenant, i): s for i, s in found.items()})
    if missing:
        raise UnknownUpstreams(missing)
    return states


class InsertResult(msgspec.Struct, frozen=True):
    """Jobs created by :meth:`PostgresStore.insert_jobs`, and the existing jobs returned
    instead of new ones for repeated idempotency keys."""

    created: list[DispatchEntry]
    existing: list[Job]
    created_at: dict[uuid.UUID, datetime] = {}  # of each created job


# Notes confirmed by one process between its vacuums of jobs_unindexed (see
# PostgresStore._vacuum_notes).
VACUUM_NOTES_EVERY = 100_000


class PostgresStore:
    """Every read and guarded state change taskflow makes in PostgreSQL.

    Batch operations take and return lists so that callers can turn many jobs into one
    round trip; each method is one statement (one implicit transaction).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._confirmed: list[uuid.UUID] = []
        self._confirming: asyncio.Task[None] | None = None
        self.vacuum_notes_every = VACUUM_NOTES_EVERY
        self._confirmed_since_vacuum = 0

    async def close(self) -> None:
        if self._confirming is not None:
            await asyncio.gather(self._confirming, return_exceptions=True)
        await self.pool.close()

    def confirm_indexed_soon(self, ids: Sequence[uuid.UUID]) -> None:
        """Like :meth:`confirm_indexed`, off the caller's path: confirmations arriving
        within a few milliseconds share one DELETE. One that fails costs only a repeated
        (idempotent) enqueue by the reconciler."""
        self._confirmed.extend(ids)
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._confirm_later())

    async def _confirm_later(self) -> None:
        await asyncio.sleep(0.02)
        while self._confirmed:
            ids, self._confirmed = self._confirmed[:10_000], self._confirmed[10_000:]
            try:
                await self.confirm_indexed(ids)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                log.warning("could not confirm %d indexed jobs (%r); the reconciler will "
                            "check them", len(ids), exc)
                continue
            self._confirmed_since_vacuum += len(ids)
            if self._confirmed_since_vacuum >= self.vacuum_notes_every:
                self._confirmed_since_vacuum = 0
                await self._vacuum_notes()

    async def _vacuum_notes(self) -> None:
        """Every submit writes a row in jobs_unindexed and its confirmation deletes it, so
        a bulk submit of a million jobs leaves a million dead rows there. Autovacuum (a
        minute apart at best) may leave them to the reconciler's next pass, which then
        reads and prunes them all at once: ~0.5 s of two PostgreSQL processes and ~50 MB
        of WAL here, slowing the drain that pass coincides with to 0.5-0.8x. Vacuumed
        every ``vacuum_notes_every`` confirmations, the table stays small and its
        upkeep is spread over the submits that cause it (~30 ms per 100,000 rows)."""
        try:
            await self.pool.execute(QUERIES["vacuum_unindexed"])
        except Exception as exc:  # noqa: BLE001 - autovacuum does it later
            log.warning("could not vacuum jobs_unindexed (%r); autovacuum will", exc)

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> InsertResult:
        """Create jobs in one statement (plus, when some depend on existing jobs, the
        locking of those and the edges, in the same transaction).

        Raises :class:`UnknownUpstreams` when ``depends_on`` names a job that does not
        exist for the job's tenant. When the connection breaks or the statement times
        out, the commit may still have happened: the jobs are looked up by id, and if
        they exist this returns as if nothing had gone wrong (so that a caller never
        answers "failed" for jobs that were created). Likewise when a job's id is taken:
        ids are made here (UUIDv7), so these very jobs were inserted before, by a caller
        that sends them again after an error past the commit (the API's group commit
        halves a failed batch and sends the halves again)."""
        try:
            return await self._insert_jobs(jobs)
        except (*MAYBE_COMMITTED, asyncpg.UniqueViolationError) as exc:
            sent_before = isinstance(exc, asyncpg.UniqueViolationError)
            if sent_before and exc.constraint_name != "jobs_pkey":
                raise
            found = await self._created_anyway(jobs, sent_before=sent_before)
            if found is None:
                raise
            return found

    async def _created_anyway(
        self, jobs: Sequence[NewJob], *, sent_before: bool = False,
    ) -> InsertResult | None:
        """What an insert of ``jobs`` that failed after its commit made, or None (the
        caller's error stands). ``sent_before``: they were inserted by an earlier attempt,
        whose one statement made every one of them, bar the idempotent replays."""
        try:
            rows = await self.pool.fetch(QUERIES["created_jobs"], [j.id for j in jobs])
        except Exception:  # noqa: BLE001 - still unreachable: the caller's error stands
            return None
        sent = {j.id: j for j in jobs}
        if not rows or any((r["tenant"], r["task"]) != (sent[r["id"]].tenant,
                                                      sent[r["id"]].task) for r in rows):
            return None  # not these jobs: an id taken by another (a caller that made ids)
        found = {r["id"] for r in rows}
        if sent_before and any(j.id not in found and j.idempotency_key is None
                               for j in jobs):
            return None  # not all of them were sent before: this insert made nothing
        log.warning("the insert of %d jobs failed after its commit; answering with the "
                    "jobs it created", len(jobs))
        return await self._with_existing(jobs, rows)

    async def _insert_jobs(self, jobs: Sequence[NewJob]) -> InsertResult:
        if not any(j.depends_on for j in jobs):
            rows = await self.pool.fetch(QUERIES["insert_jobs"], *_job_columns(jobs))
            return await self._with_existing(jobs, rows)
        async with self.pool.acquire() as conn, conn.transaction():
            upstreams = await _lock_upstreams(conn, jobs)
            dag = [_Placement() for _ in jobs]
            for job, placed in zip(jobs, dag):
                placed.upstream_count = len(set(job.depends_on))
                for up in set(job.depends_on):
                    state = upstreams[(job.tenant, up)]
                    if state is not JobState.SUCCEEDED:
                        placed.pending += 1  # a failed one too: a retry may still succeed
                    if state in (JobState.FAILED, JobState.CANCELLED):
                        placed.doom(up, state)
            rows = await conn.fetch(QUERIES["insert_jobs"], *_job_columns(jobs, dag))
            created = {r["id"] for r in rows}
            edges = [(up, j.id) for j in jobs if j.id in created for up in set(j.depends_on)]
            await conn.execute(QUERIES["insert_dependencies"], [e[0] for e in edges],
                               [e[1] for e in edges])
        return await self._with_existing(jobs, rows)

    async def insert_workflow(
        self, tenant: str, name: str, nodes: Sequence[WorkflowNode]
    ) -> tuple[Workflow, dict[str, uuid.UUID]]:
        """Create a workflow and all its jobs and edges atomically. ``nodes`` must be
        validated already (see :func:`taskflow.dag.check_workflow`), and carry no
        idempotency keys: a job skipped as a duplicate would leave its dependents waiting."""
        if any(n.job.idempotency_key is not None for n in nodes):
            raise ValueError("workflow jobs cannot have idempotency keys")
        ids = {n.name: n.job.id for n in nodes}
        with_dependents = {up for n in nodes for up in n.after}
        jobs = [msgspec.structs.replace(n.job, tenant=tenant) for n in nodes]
        dag = [_Placement(upstream_count=len(set(n.after)), pending=len(set(n.after)),
                          has_dependents=n.name in with_dependents, node=n.name)
               for n in nodes]
        workflow_id = uuid7()
        try:
            row = await self._insert_workflow(workflow_id, tenant, name, jobs, dag, nodes, ids)
        except MAYBE_COMMITTED:
            try:  # as in insert_jobs: it may have committed before the error
                row = await self.pool.fetchrow(QUERIES["get_workflow"], workflow_id)
            except Exception:  # noqa: BLE001 - the caller's error stands
                row = None
            if row is None:
                raise
        return Workflow(**row), ids

    async def _insert_workflow(
        self, workflow_id: uuid.UUID, tenant: str, name: str, jobs: list[NewJob],
        dag: list[_Placement], nodes: Sequence[WorkflowNode], ids: dict[str, uuid.UUID],
    ) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(QUERIES["insert_workflow"], workflow_id, tenant, name)
            dag = [msgspec.structs.replace(p, workflow_id=workflow_id) for p in dag]
            await conn.fetch(QUERIES["insert_jobs"], *_job_columns(jobs, dag))
            edges = [(ids[up], n.job.id) for n in nodes for up in set(n.after)]
            await conn.execute(QUERIES["insert_dependencies"], [e[0] for e in edges],
                               [e[1] for e in edges])
        return row

    async def workflow_entries(self, workflow_id: uuid.UUID) -> list[DispatchEntry]:
        """Dispatch entries of a workflow's jobs that are ready to be indexed."""
        return [_entry(r) for r in await self.pool.fetch(QUERIES["workflow_entries"],
                                                          workflow_id)]

    async def get_workflow(self, workflow_id: uuid.UUID | str) -> Workflow | None:
        row = await self.pool.fetchrow(QUERIES["get_workflow"], workflow_id)
        return None if row is None else Workflow(**row)

    async def workflow_jobs(self, workflow_id: uuid.UUID | str) -> list[Job]:
        return [_job(r) for r in await self.pool.fetch(QUERIES["workflow_jobs"], workflow_id)]

    async def upstream_results(
        self, job_ids: Sequence[uuid.UUID], max_bytes: int
    ) -> tuple[dict[uuid.UUID, dict[str, Any]], dict[uuid.UUID, int]]:
        """Results of each job's direct upstream jobs, keyed by node name in a workflow
        and by job id otherwise, and the jobs whose upstream results add up to more than
        ``max_bytes`` (JSON), with how much: theirs are not loaded. One query for the
        whole batch."""
        out: dict[uuid.UUID, dict[str, Any]] = {j: {} for j in job_ids}
        too_large: dict[uuid.UUID, int] = {}
        rows = await self.pool.fetch(QUERIES["upstream_results"], list(job_ids), max_bytes)
        for r in rows:
            if r["over"]:
                too_large[r["job_id"]] = max(too_large.get(r["job_id"], 0), r["loaded"])
                continue
            key = r["node"] or str(r["id"])
            out[r["job_id"]][key] = None if r["result"] is None else _decode(r["result"])
        for job_id in too_large:
            del out[job_id]
        return out, too_large

    async def _with_existing(
        self, jobs: Sequence[NewJob], rows: list[asyncpg.Record]
    ) -> InsertResult:
        created = [_entry(r) for r in rows]
        created_at = {r["id"]: r["created_at"] for r in rows}
        existing: list[Job] = []
        if len(created) < len(jobs):
            by_tenant: dict[str, list[str]] = {}
            made = {e.id for e in created}
            for j in jobs:
                if j.id not in made and j.idempotency_key is not None:
                    by_tenant.setdefault(j.tenant, []).append(j.idempotency_key)
            for tenant, keys in by_tenant.items():
                found = await self.pool.fetch(QUERIES["jobs_by_idempotency_key"], tenant, keys)
                existing.extend(_job(r) for r in found)
        return InsertResult(created, existing, created_at)

    async def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        row = await self.pool.fetchrow(QUERIES["get_job"], job_id)
        return None if row is None else _job(row)

    async def get_jobs(self, ids: Sequence[uuid.UUID | str]) -> list[Job]:
        return [_job(r) for r in await self.pool.fetch(QUERIES["get_jobs"], list(ids))]

    async def job_attempts(self, job_id: uuid.UUID | str) -> list[Attempt]:
        rows = await self.pool.fetch(QUERIES["job_attempts"], job_id)
        return [
            Attempt(r["attempt"], r["worker"], r["started_at"], r["finished_at"],
                    r["duration"], r["outcome"], r["error"])
            for r in rows
        ]

    async def job_histories(
        self, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, tuple[Job, list[Attempt]]]:
        """Jobs and their finished attempts as of one snapshot (an event stream derives
        its events from both; read apart, an attempt could end in between); absent ids
        are left out."""
        async with self.pool.acquire() as conn, conn.transaction(
                isolation="repeatable_read", readonly=True):
            jobs = await conn.fetch(QUERIES["get_jobs"], list(ids))
            rows = await conn.fetch(QUERIES["jobs_attempts"], [r["id"] for r in jobs])
        found: dict[uuid.UUID, tuple[Job, list[Attempt]]] = {
            r["id"]: (_job(r), []) for r in jobs}
        for r in rows:
            found[r["job_id"]][1].append(
                Attempt(r["attempt"], r["worker"], r["started_at"], r["finished_at"],
                        r["duration"], r["outcome"], r["error"]))
        return found

    async def start_jobs(self, claims: Sequence[Claim], worker: str) -> list[StartedJob]:
        rows = await self.pool.fetch(
            QUERIES["start_jobs"], [c.id for c in claims], [c.token for c in claims], worker
        )
        return [StartedJob(*r.values()) for r in rows]

    async def finish_jobs(self, outcomes: Sequence[Outcome]) -> list[DispatchEntry]:
        """End attempts; returns the jobs that moved (those a token guard refused are
        absent). Entries in a dispatchable state are retries to index in Redis."""
        rows = await self.pool.fetch(QUERIES["finish_jobs"], *_outcome_columns(outcomes))
        return [_entry(r) for r in rows]

    async def finish_and_start(
        self, outcomes: Sequence[Outcome], queues: Sequence[str], seats: int, worker: str,
        token_prefix: str,
    ) -> tuple[list[DispatchEntry], list[StartedJob],
               dict[uuid.UUID, dict[uuid.UUID, str | None]]]:
        """:meth:`finish_jobs`, starting up to ``seats`` of the dependents it releases in
        ``queues`` for ``worker`` in the same statement (tokens ``token_prefix`` + n):
        returns the jobs that moved (started ones included, in state running), the jobs
        started, and for each of those its upstream jobs among ``outcomes`` with their
        results as stored (the JSON text :meth:`upstream_results` reads: jsonb's key
        order and numbers, not the handler's)."""
        rows = await self.pool.fetch(QUERIES["finish_and_start"], *_outcome_columns(outcomes),
                                     list(queues), seats, worker, token_prefix)
        started = [
            StartedJob(r["id"], r["task"], r["queue"], r["payload"], r["priority"],
                       r["attempts"], r["max_attempts"], r["retry_policy"], r["timeout"],
                       r["lease_token"], r["tenant"], r["upstream_count"], r["run_at"],
                       r["has_dependents"], r["node"])
            for r in rows if r["lease_token"] is not None
        ]
        own = {o.id for o in outcomes}
        stored = {r["id"]: r["result"] for r in rows
                  if r["id"] in own and r["state"] == "succeeded"}
        in_batch = {r["id"]: {u: stored[u] for u in r["batch_upstreams"]}
                    for r in rows if r["lease_token"] is not None}
        return [_entry(r) for r in rows], started, in_batch

    async def started_by_flush(
        self, upstreams: Sequence[uuid.UUID], token_prefix: str
    ) -> list[Claim]:
        """Jobs a flush (of ``upstreams``, tokens ``token_prefix`` + n) started, if its
        commit, unconfirmed, happened."""
        rows = await self.pool.fetch(QUERIES["started_by_flush"], list(upstreams),
                                     token_prefix)
        return [Claim(str(r["id"]), r["lease_token"]) for r in rows]

    async def unstart_jobs(self, claims: Sequence[Claim]) -> list[DispatchEntry]:
        """Put jobs started but never run back in line, no attempt spent (one whose
        cancellation was requested ends cancelled, and its dependents with it)."""
        return await self._end_running("unstart_jobs", claims)

    async def hand_back_jobs(self, claims: Sequence[Claim]) -> list[DispatchEntry]:
        """Requeue unfinished attempts at shutdown (cancel them, if asked to)."""
        return await self._end_running("hand_back_jobs", claims)

    async def rescue_jobs(self, claims: Sequence[Claim]) -> list[DispatchEntry]:
        """Requeue (or fail, or cancel) attempts whose lease expired."""
        return await self._end_running("rescue_jobs", claims)

    async def _end_running(self, query: str, claims: Sequence[Claim]) -> list[DispatchEntry]:
        """Run a guarded running -> * statement; the dependents of jobs it ended failed or
        cancelled are cancelled in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                QUERIES[query], [c.id for c in claims], [c.token for c in claims]
            )
            ended = [r for r in rows
                     if r["has_dependents"] and r["state"] in ("failed", "cancelled")]
            if ended:
                rows += await conn.fetch(QUERIES["cancel_dependents"],
                                         [r["id"] for r in ended], [r["state"] for r in ended])
        return [_entry(r) for r in rows]

    async def running_jobs_started_before(
        self, seconds: float, after: uuid.UUID | None, limit: int
    ) -> tuple[list[tuple[str, str, str]], uuid.UUID | None]:
        """Of the next ``limit`` unfinished jobs in id order after ``after``: (id, queue,
        lease token) of those whose attempt has run for longer than ``seconds``, and the
        id to continue after (None once the page reached the last unfinished job)."""
        rows = await self.pool.fetch(QUERIES["running_jobs_started_before"], seconds,
                                     after or uuid.UUID(int=0), limit)
        more = rows[0]["last_id"] if rows[0]["scanned"] == limit else None
        return [(str(r["id"]), r["queue"], r["lease_token"]) for r in rows
                if r["id"] is not None], more

    async def running_attempts(self, claims: Sequence[Claim]) -> dict[str, bool]:
        """Of these attempts, those still running: id -> whether a cancel was requested."""
        rows = await self.pool.fetch(
            QUERIES["running_attempts"], [c.id for c in claims], [c.token for c in claims])
        return {str(r["id"]): r["cancel_requested"] for r in rows}

    async def dispatchable_jobs(self, ids: Sequence[uuid.UUID | str]) -> list[DispatchEntry]:
        """Those of ``ids`` that are queued or scheduled."""
        return [_entry(r) for r in await self.pool.fetch(QUERIES["dispatchable_jobs"], list(ids))]

    async def claim_index_generation(self, candidate: uuid.UUID) -> tuple[uuid.UUID, bool]:
        """(the index generation of this database, whether this call created it while no
        job waits -- a new deployment, whose empty Redis index is complete)."""
        row = await self.pool.fetchrow(QUERIES["claim_index_generation"], candidate)
        return row["generation"], row["fresh"]

    async def confirm_indexed(self, ids: Sequence[uuid.UUID]) -> None:
        """Redis has these jobs: they no longer wait in jobs_unindexed."""
        await self.pool.execute(QUERIES["confirm_indexed"], list(ids))

    async def note_unindexed(self, ids: Sequence[uuid.UUID]) -> None:
        """These dispatchable jobs may be missing from Redis: the reconciler indexes them."""
        await self.pool.execute(QUERIES["note_unindexed"], list(ids))

    async def list_unindexed(
        self, older_than: float, limit: int
    ) -> tuple[list[tuple[uuid.UUID, int]], list[DispatchEntry]]:
        """Notes older than ``older_than`` seconds (job id, note count), and the dispatch
        entries of their jobs still dispatchable."""
        rows = await self.pool.fetch(QUERIES["list_unindexed"], older_than, limit)
        entries = [DispatchEntry(r["job_id"], r["queue"], r["priority"], r["run_at"],
                                 JobState(r["state"]))
                   for r in rows if r["state"] in ("queued", "scheduled")]
        return [(r["job_id"], r["noted"]) for r in rows], entries

    async def clear_unindexed(self, notes: Sequence[tuple[uuid.UUID, int]]) -> None:
        """Delete notes the reconciler handled, unless noted again since."""
        await self.pool.execute(QUERIES["clear_unindexed"], [n[0] for n in notes],
                                [n[1] for n in notes])

    async def dispatchable_jobs_page(
        self, after: uuid.UUID | None, limit: int
    ) -> list[DispatchEntry]:
        after = after or uuid.UUID(int=0)
        rows = await self.pool.fetch(QUERIES["dispatchable_jobs_page"], after, limit)
        return [_entry(r) for r in rows]

    async def get_tenant_job(self, job_id: uuid.UUID, tenant: str | None) -> Job | None:
        """The job if ``tenant`` owns it (``None``: whoever owns it)."""
        row = await self.pool.fetchrow(QUERIES["get_tenant_job"], job_id, tenant)
        return None if row is None else _job(row)

    async def list_jobs(self, tenant: str | None, query: JobQuery) -> list[Job]:
        """One page of jobs, newest first, after ``query.before`` (keyset paging).
        ``tenant=None`` lists every tenant's (``query.tenant`` may narrow it)."""
        labels = _json_text(query.labels) if query.labels else None
        states = [s.value for s in query.states] if query.states else None
        rows = await self.pool.fetch(
            QUERIES["list_jobs"], tenant if tenant is not None else query.tenant, query.before,
            states, query.queue, query.task, labels, query.created_after,
            query.created_before, query.limit, query.with_payload, query.with_result,
        )
        return [_job(r) for r in rows]

    async def workflow_members(
        self, workflow_id: uuid.UUID, *, with_payload: bool = False, with_result: bool = False
    ) -> list[WorkflowMember]:
        """A workflow's jobs as its view shows them; payload and result only when asked
        for (None otherwise)."""
        rows = await self.pool.fetch(QUERIES["workflow_job_views"], workflow_id,
                                     with_payload, with_result)
        return [WorkflowMember(**{**r, "state": JobState(r["state"])}) for r in rows]

    async def idempotency_keys_taken(self, tenant: str, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that name a job of ``tenant``."""
        rows = await self.pool.fetch(QUERIES["jobs_by_idempotency_key"], tenant, list(keys))
        return {r["idempotency_key"] for r in rows}

    async def count_active_jobs(
        self, keys: Sequence[tuple[str, str]], limit: int
    ) -> dict[tuple[str, str], int]:
        """Unfinished jobs per (tenant, queue), each count stopping at ``limit``."""
        rows = await self.pool.fetch(QUERIES["count_active_jobs"], [k[0] for k in keys],
                                     [k[1] for k in keys], limit)
        return {(r["tenant"], r["queue"]): r["active"] for r in rows}

    async def cancel_waiting_job(
        self, job_id: uuid.UUID, tenant: str
    ) -> tuple[Job, list[uuid.UUID]] | None:
        """blocked/scheduled/queued -> cancelled, and its blocked descendants with it (one
        transaction): the job, and the ids of the descendants; None if the job is not
        waiting."""
        descendants: list[uuid.UUID] = []
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(QUERIES["cancel_waiting_job"], job_id, tenant)
            if row is not None and row["has_dependents"]:
                descendants = [r["id"] for r in await conn.fetch(
                    QUERIES["cancel_dependents"], [job_id], ["cancelled"])]
        return None if row is None else (_job(row), descendants)

    async def request_running_job_cancel(self, job_id: uuid.UUID, tenant: str) -> Job | None:
        """Flags a running job for cancellation; None if the job is not running."""
        row = await self.pool.fetchrow(QUERIES["request_running_job_cancel"], job_id, tenant)
        return None if row is None else _job(row)

    async def retry_job(self, job_id: uuid.UUID, tenant: str) -> Job | None:
        """failed/cancelled -> queued (blocked while upstreams are unfinished); the
        descendants its failure cancelled wait for it again. None if the job is in
        neither state, or if one of its upstreams ended failed or cancelled."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(QUERIES["retry_job"], job_id, tenant)
            if row is not None and row["has_dependents"]:
                await conn.fetch(QUERIES["revive_dependents"], job_id)
        return None if row is None else _job(row)

    async def ended_upstreams(self, job_id: uuid.UUID) -> list[uuid.UUID]:
        """The job's upstream jobs that ended failed or cancelled."""
        return [r["id"] for r in await self.pool.fetch(QUERIES["ended_upstreams"], job_id)]

    async def get_tenant_workflow(
        self, workflow_id: uuid.UUID, tenant: str | None
    ) -> Workflow | None:
        """The workflow if ``tenant`` owns it (``None``: whoever owns it)."""
        row = await self.pool.fetchrow(QUERIES["get_tenant_workflow"], workflow_id, tenant)
        return None if row is None else Workflow(**row)

    async def cancel_workflow(
        self, workflow_id: uuid.UUID
    ) -> tuple[list[tuple[uuid.UUID, str]], list[uuid.UUID]]:
        """Cancel a workflow's waiting jobs (and any job outside it that depends on them)
        and flag its running ones; returns the (id, queue) of those running jobs, whose
        workers must be told, and the ids of the jobs it cancelled."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(QUERIES["cancel_workflow_jobs"], workflow_id)
            cancelled = [r["id"] for r in rows if r["state"] == "cancelled"]
            fanning = [r["id"] for r in rows
                       if r["state"] == "cancelled" and r["has_dependents"]]
            if fanning:
                cancelled += [r["id"] for r in await conn.fetch(
                    QUERIES["cancel_dependents"], fanning, ["cancelled"] * len(fanning))]
        return [(r["id"], r["queue"]) for r in rows if r["state"] == "running"], cancelled
