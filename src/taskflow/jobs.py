"""Submitting jobs: durable in PostgreSQL first, then indexed in Redis."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from taskflow import metrics
from taskflow.adapters.postgres import InsertResult, PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow.models import NewJob

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
