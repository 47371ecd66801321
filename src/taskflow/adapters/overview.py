"""The reads behind the console's views that the job store does not already make: queue
figures by state (running jobs by queue and worker apart) and by minute, the workflow list, a
workflow's edges and a job's direct neighbours. All of them PostgreSQL, the source of
truth, scoped to a tenant (``None``: every tenant's, for operators)."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
import msgspec

from taskflow.adapters.sql import QUERIES


class Backlog(msgspec.Struct, frozen=True):
    """One queue's waiting (unfinished, not running) jobs, as far as they were counted."""

    queue: str
    ready: int
    scheduled: int
    blocked: int
    oldest_ready_due: datetime | None
    counted: int


class Running(msgspec.Struct, frozen=True):
    """Running jobs by queue and by worker."""

    by_queue: dict[str, int]
    by_worker: dict[str, int]


class Finished(msgspec.Struct, frozen=True):
    """Jobs of one queue that ended in one minute in one state."""

    queue: str
    minute: datetime
    state: str
    n: int


class WorkflowSummary(msgspec.Struct, frozen=True):
    """A workflow with (up to a cap) its jobs counted: enough for its state in a list."""

    id: uuid.UUID
    tenant: str
    name: str
    created_at: datetime
    total: int
    unfinished: int
    succeeded: int
    failed: int
    running: bool  # any job unfinished, counted or not


class JobLink(msgspec.Struct, frozen=True):
    """A direct upstream (``up``) or downstream (``down``) job."""

    direction: str
    id: uuid.UUID
    task: str
    state: str
    node: str | None


class OverviewStore:
    """One statement per method (see ``queries.sql``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def queue_backlog(self, tenant: str | None, scan_limit: int) -> list[Backlog]:
        """Waiting jobs by queue, the oldest ``scan_limit`` of them at most."""
        rows = await self.pool.fetch(QUERIES["queue_backlog"], tenant, scan_limit)
        return [Backlog(**r) for r in rows]

    async def running_jobs(self, tenant: str | None, ids: list[str]) -> Running:
        """Which of ``ids`` (jobs in flight) are running, by queue and by worker."""
        rows = await self.pool.fetch(QUERIES["running_jobs"], tenant, ids) if ids else []
        return Running({r["queue"]: r["running"] for r in rows if not r["by_worker"]},
                       {r["worker"]: r["running"] for r in rows
                        if r["by_worker"] and r["worker"] is not None})

    async def finished_by_minute(self, tenant: str | None, since: datetime,
                                 until: datetime) -> list[Finished]:
        rows = await self.pool.fetch(QUERIES["finished_by_minute"], tenant, since, until)
        return [Finished(**r) for r in rows]

    async def list_workflows(self, tenant: str | None, before: uuid.UUID | None,
                             limit: int, count_cap: int) -> list[WorkflowSummary]:
        """Up to ``limit`` workflows, each with at most ``count_cap`` jobs counted."""
        rows = await self.pool.fetch(QUERIES["list_workflows"], tenant, before, limit,
                                     count_cap)
        return [WorkflowSummary(**r) for r in rows]

    async def workflow_edges(self, workflow_id: uuid.UUID) -> list[tuple[uuid.UUID, uuid.UUID]]:
        rows = await self.pool.fetch(QUERIES["workflow_edges"], workflow_id)
        return [(r["upstream_id"], r["job_id"]) for r in rows]

    async def job_links(self, job_id: uuid.UUID, limit: int) -> list[JobLink]:
        rows = await self.pool.fetch(QUERIES["job_links"], job_id, limit)
        return [JobLink(**r) for r in rows]
