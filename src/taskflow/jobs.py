"""Submitting, cancelling and retrying jobs: durable in PostgreSQL first, then reflected
in Redis. A Redis failure after the commit is logged, not raised: the reconciler indexes
what PostgreSQL holds."""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Sequence

from msgspec import Struct

from taskflow import metrics
from taskflow.adapters.postgres import InsertResult, PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow.models import DispatchEntry, Job, NewJob, Workflow, WorkflowNode
from taskflow.states import DISPATCHABLE, JobState

log = logging.getLogger(__name__)


async def submit(
    store: PostgresStore, dispatch: RedisDispatch, jobs: Sequence[NewJob]
) -> InsertResult:
    """Create jobs (one statement) and index them for dispatch (one Redis round trip).

    Once PostgreSQL has committed, the jobs exist: if Redis fails here the reconciler
    indexes them later, so the failure is logged, not raised.
    """
    result = await store.insert_jobs(jobs)
    per_queue: dict[str, int] = {}
    for entry in result.created:
        per_queue[entry.queue] = per_queue.get(entry.queue, 0) + 1
    for queue, n in per_queue.items():  # one label lookup per queue, not per job
        metrics.JOBS_SUBMITTED.labels(queue).inc(n)
    if result.created:
        await _index(store, dispatch, result.created)
    return result


async def _index(
    store: PostgresStore, dispatch: RedisDispatch, entries: list[DispatchEntry]
) -> None:
    """Enqueue committed jobs; once Redis confirmed, their jobs_unindexed rows go."""
    entries = [e for e in entries if e.state in DISPATCHABLE]
    if not entries:
        return
    try:
        if len({e.queue for e in entries}) == 1:
            await dispatch.enqueue(entries)
        else:
            batch = dispatch.batch()
            await dispatch.enqueue(entries, batch)
            await batch.execute()
    except Exception:
        log.exception("committed %d jobs but could not index them in Redis; the "
                      "reconciler will", len(entries))
        return
    store.confirm_indexed_soon([e.id for e in entries])


async def note_unindexed(store: PostgresStore, entries: Sequence[DispatchEntry]) -> None:
    """After a failed enqueue of jobs that are dispatchable in PostgreSQL: note them for
    the reconciler (if PostgreSQL fails too, its periodic full pass finds them)."""
    try:
        await store.note_unindexed([e.id for e in entries])
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not note %d jobs for the reconciler (%r); its full pass will "
                    "find them", len(entries), exc)


async def announce(dispatch: RedisDispatch, ids: Sequence[object]) -> None:
    """Tell waiting API clients that these jobs (or workflows) changed state. Best effort:
    the change is durable already, and a waiter that misses the message reads PostgreSQL
    again by its deadline (see ``api/watch.py``). A message names at most 1,000 ids: a
    cancelled workflow may end far more jobs at once."""
    try:
        for i in range(0, len(ids), 1000):
            await dispatch.publish_changed(ids[i:i + 1000])
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not announce %d changed jobs (%r)", len(ids), exc)


class Cancel(str, enum.Enum):
    """What a cancel request did."""

    CANCELLED = "cancelled"
    """The job was waiting and is now cancelled."""
    REQUESTED = "requested"
    """The job is running; its worker was told to stop it (it ends ``cancelled``)."""
    ALREADY = "already"
    """The job was cancelled before."""
    TOO_LATE = "too_late"
    """The job had already succeeded or failed."""


class CancelResult(Struct, frozen=True):
    outcome: Cancel
    job: Job


async def cancel(
    store: PostgresStore, dispatch: RedisDispatch, job_id: uuid.UUID, tenant: str
) -> CancelResult | None:
    """Cancel a job of ``tenant``; None when it has no such job.

    A running job is flagged in PostgreSQL and its worker is told through Redis
    (``request_cancel``); a Redis failure there is raised, and repeating the request is
    safe. The loop covers a job that changes state between the guarded updates (a retry
    requeues it, say).
    """
    for _ in range(3):
        cancelled = await store.cancel_waiting_job(job_id, tenant)
        if cancelled is not None:
            job, descendants = cancelled
            # The descendants it cancelled ended too: their waiters are told as well.
            await announce(dispatch, [job.id, *descendants,
                                      *([job.workflow_id] if job.workflow_id else [])])
            return CancelResult(Cancel.CANCELLED, job)
        job = await store.request_running_job_cancel(job_id, tenant)
        if job is not None:
            await dispatch.request_cancel(job.queue, str(job.id))
            return CancelResult(Cancel.REQUESTED, job)
        job = await store.get_tenant_job(job_id, tenant)
        if job is None:
            return None
        if job.state is JobState.CANCELLED:
            return CancelResult(Cancel.ALREADY, job)
        if job.state in (JobState.SUCCEEDED, JobState.FAILED):
            return CancelResult(Cancel.TOO_LATE, job)
    raise RuntimeError(f"job {job_id} kept changing state while being cancelled")


class UpstreamNotRetried(Exception):
    """A job cannot be retried while upstream jobs it waits on have failed or been
    cancelled: nothing would release it. Retrying those upstreams releases it."""

    def __init__(self, job_id: uuid.UUID, upstreams: list[uuid.UUID]) -> None:
        listed = ", ".join(str(u) for u in upstreams)
        super().__init__(f"job {job_id} waits on upstream jobs that ended failed or "
                         f"cancelled ({listed}); retry those: their success releases it")
        self.upstreams = upstreams


async def retry(
    store: PostgresStore, dispatch: RedisDispatch, job_id: uuid.UUID, tenant: str
) -> Job | None:
    """Put a failed or cancelled job of ``tenant`` back in its queue with at least one
    attempt left (or back to waiting, if upstream jobs have not succeeded); the
    dependents its failure cancelled wait for it again. None when the job is in neither
    state (see ``get_tenant_job`` for why); :class:`UpstreamNotRetried` when an upstream
    it waits on has ended failed or cancelled."""
    job = await store.retry_job(job_id, tenant)
    if job is None:
        current = await store.get_tenant_job(job_id, tenant)
        if current is not None and current.state in (JobState.FAILED, JobState.CANCELLED):
            ended = await store.ended_upstreams(job_id)
            if ended:
                raise UpstreamNotRetried(job_id, ended)
    if job is not None:
        await announce(dispatch, [job.id, *([job.workflow_id] if job.workflow_id else [])])
        entry = DispatchEntry(job.id, job.queue, job.priority, job.run_at, job.state)
        try:
            await dispatch.reindex([entry])
        except Exception:
            log.exception("job %s is queued again but could not be indexed in Redis; the "
                          "reconciler will", job.id)
            if entry.state in DISPATCHABLE:
                await note_unindexed(store, [entry])
    return job


async def submit_workflow(
    store: PostgresStore, dispatch: RedisDispatch, tenant: str, name: str,
    nodes: Sequence[WorkflowNode],
) -> tuple[Workflow, dict[str, uuid.UUID]]:
    """Create a workflow's jobs and edges atomically, then index its root jobs. The
    graph must have passed :func:`taskflow.dag.check_workflow`."""
    workflow, ids = await store.insert_workflow(tenant, name, nodes)
    for node in nodes:
        metrics.JOBS_SUBMITTED.labels(node.job.queue).inc()
    roots = await store.workflow_entries(workflow.id)
    await _index(store, dispatch, roots)
    return workflow, ids


async def cancel_workflow(
    store: PostgresStore, dispatch: RedisDispatch, workflow_id: uuid.UUID
) -> int:
    """Cancel every unfinished job of a workflow; returns how many were running (their
    workers are told to stop them, and they end cancelled). A Redis failure is raised:
    the flags are durable, so repeating the request is safe."""
    running, cancelled = await store.cancel_workflow(workflow_id)
    await announce(dispatch, [workflow_id, *cancelled])
    for job_id, queue in running:
        await dispatch.request_cancel(queue, str(job_id))
    return len(running)
