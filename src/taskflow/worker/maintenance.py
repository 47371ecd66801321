"""Background duties that keep Redis honest to PostgreSQL.

- **reaper** (every ``reaper_interval``, each worker, its own queues): attempts whose lease
  expired in Redis are rescued in PostgreSQL (requeued, or failed when out of attempts)
  and indexed again.
- **rescuer sweep** (every ``reconcile_interval``, one process at a time, all queues): jobs
  PostgreSQL says are running whose lease Redis no longer holds (a reaper died mid-way,
  Redis was flushed) are rescued the same way.
- **reconciler** (same schedule, and at once when Redis lost its data): every job
  PostgreSQL says is queued or scheduled is indexed in Redis if it is missing there
  (Redis restart or flush, an API enqueue whose ``ZADD`` failed).

Every rescue is fenced by the attempt's lease token, so a racing worker's outcome wins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Sequence

from taskflow.adapters.postgres import PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow import metrics
from taskflow.config import Settings
from taskflow.models import Claim
from taskflow.supervise import every, supervised

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(
        self, settings: Settings, store: PostgresStore, dispatch: RedisDispatch,
        queues: Sequence[str],
    ) -> None:
        self.cfg = settings.maintenance
        self.lease_ttl = settings.worker.lease_ttl
        self.store = store
        self.dispatch = dispatch
        self.queues = list(queues)
        self.lock_key = f"{dispatch.prefix}:maintenance-lock"

    async def run(self) -> None:
        await asyncio.gather(
            supervised("reaper", lambda: every(self.cfg.reaper_interval, self.reap_once)),
            supervised("reconciler",
                       lambda: every(self.cfg.reconcile_interval, self.sweep_and_reconcile)),
        )

    async def reap_once(self) -> int:
        """Rescue this process's queues' expired leases; reindex all if Redis was emptied."""
        if not await self.dispatch.ensure_epoch():
            log.warning("Redis has no dispatch index (new, restarted or flushed): rebuilding "
                        "it from PostgreSQL")
            await self.sweep_running()
            await self.reconcile()
        rescued = 0
        for queue in self.queues:
            claims = await self.dispatch.reap(queue)
            if claims:
                rescued += await self._rescue(claims)
            ready, delayed, inflight = await self.dispatch.depth(queue)
            metrics.QUEUE_DEPTH.labels(queue, "ready").set(ready)
            metrics.QUEUE_DEPTH.labels(queue, "delayed").set(delayed)
            metrics.QUEUE_DEPTH.labels(queue, "in_flight").set(inflight)
        return rescued

    async def sweep_and_reconcile(self) -> None:
        token = os.urandom(8).hex()
        ttl_ms = int(max(self.cfg.reconcile_interval, 5) * 1000)
        if not await self.dispatch.client.set(self.lock_key, token, nx=True, px=ttl_ms):
            return  # another process is on it
        await self.sweep_running()
        await self.reconcile()

    async def sweep_running(self) -> int:
        """Rescue running attempts older than a lease whose lease Redis does not hold."""
        rows = await self.store.running_jobs_started_before(self.lease_ttl, 10_000)
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for job_id, queue, token in rows:
            by_queue.setdefault(queue, []).append((job_id, token))
        rescued = 0
        for queue, pairs in by_queue.items():
            holders = await self.dispatch.lease_holders(queue, [p[0] for p in pairs])
            lost = [Claim(j, t) for (j, t), h in zip(pairs, holders) if h != t]
            if lost:
                rescued += await self._rescue(lost)
        return rescued

    async def _rescue(self, claims: list[Claim]) -> int:
        entries = await self.store.rescue_jobs(claims)
        for e in entries:
            metrics.LEASES_RESCUED.labels(e.queue).inc()
        if entries:
            requeued = [e for e in entries if e.state.value in ("queued", "scheduled")]
            await self.dispatch.enqueue(requeued)
            log.warning("rescued %d jobs whose worker lost its lease (%d requeued)",
                        len(entries), len(requeued))
        return len(entries)

    async def reconcile(self) -> int:
        """Index in Redis every dispatchable job that is missing there."""
        after: uuid.UUID | None = None
        added = 0
        while True:
            page = await self.store.dispatchable_jobs_page(after, self.cfg.reconcile_batch)
            if not page:
                break
            added += await self.dispatch.enqueue(page)
            after = page[-1].id
        if added:
            metrics.JOBS_REINDEXED.inc(added)
            log.warning("reconciler indexed %d jobs Redis was missing", added)
        return added
