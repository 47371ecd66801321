"""Submitting jobs: durable in PostgreSQL first, then indexed in Redis."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from taskflow import metrics
from taskflow.adapters.postgres import InsertResult, PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow.models import NewJob, Workflow, WorkflowNode

log = logging.getLogger(__name__)


async def submit(
    store: PostgresStore, dispatch: RedisDispatch, jobs: Sequence[NewJob]
) -> InsertResult:
    """Create jobs (one statement) and index them for dispatch (one Redis call per queue).

    Once PostgreSQL has committed, the jobs exist: if Redis fails here the reconciler
    indexes them later, so the failure is logged, not raised.
    """
    result = await store.insert_jobs(jobs)
    for entry in result.created:
        metrics.JOBS_SUBMITTED.labels(entry.queue).inc()
    if result.created:
        try:
            await dispatch.enqueue(result.created)
        except Exception:
            log.exception("committed %d jobs but could not index them in Redis; the "
                          "reconciler will", len(result.created))
    return result


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
    try:
        await dispatch.enqueue(roots)
    except Exception:
        log.exception("committed workflow %s but could not index it in Redis; the "
                      "reconciler will", workflow.id)
    return workflow, ids
