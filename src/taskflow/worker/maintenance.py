"""Background duties that keep Redis honest to PostgreSQL.

- **reaper** (every ``reaper_interval``, each worker, its own queues): attempts whose lease
  expired in Redis are rescued in PostgreSQL (requeued, or failed when out of attempts)
  and indexed again.
- **rescuer sweep** (every ``reconcile_interval``, one process at a time, all queues, a
  page at a time): jobs PostgreSQL says are running whose lease Redis no longer holds (a
  reaper died mid-way, a worker died while Redis was being flushed) are rescued the same
  way -- once live workers have had a lease's time to take their leases back.
- **reconciler** (same schedule, and at once when Redis lost its data): every job
  PostgreSQL says is queued or scheduled is indexed in Redis if it is missing there
  (Redis restart or flush, an API enqueue whose ``ZADD`` failed).

Every rescue is fenced by the attempt's lease token, so a racing worker's outcome wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence

import redis.exceptions

from taskflow.adapters.postgres import PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow import metrics
from taskflow.config import Settings
from taskflow.index import IndexGuard
from taskflow.jobs import announce, note_unindexed
from taskflow.models import Claim
from taskflow.states import DISPATCHABLE, JobState
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
        self._sweep_after: uuid.UUID | None = None  # where the next sweep page starts
        # After this process lost Redis, leases may be missing or expired because Redis
        # was away, not because workers died: no rescue until live workers have had a
        # lease's time to heartbeat (and take their leases back).
        self._quiet_until = 0.0
        self.index = IndexGuard(store, dispatch)
        # The full pass over every waiting job is a safety net (a process killed before
        # it could note a failed enqueue); the unconfirmed list covers the rest.
        self._next_full_pass = time.monotonic() + self.cfg.full_reconcile_interval

    async def run(self) -> None:
        await asyncio.gather(
            supervised("reaper", lambda: every(self.cfg.reaper_interval, self.reap_once)),
            supervised("reconciler",
                       lambda: every(self.cfg.reconcile_interval, self.sweep_and_reconcile)),
        )

    def _quiet(self) -> bool:
        return time.monotonic() < self._quiet_until

    @contextlib.contextmanager
    def _noting_redis_loss(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            self._quiet_until = time.monotonic() + self.lease_ttl
            raise

    async def reap_once(self) -> int:
        """Rescue this process's queues' expired leases; reindex all if Redis was emptied."""
        with self._noting_redis_loss():
            if not await self.index.check():
                log.warning("Redis lost the dispatch index (flushed or restarted empty): "
                            "rebuilding it from PostgreSQL; running jobs keep going while "
                            "their workers take their leases back")
                began = time.monotonic()
                added = await self.reconcile()
                log.warning("rebuilt the dispatch index in %.1fs (%d jobs)",
                            time.monotonic() - began, added)
            rescued = 0
            for queue in self.queues:
                if not self._quiet():
                    claims = await self.dispatch.reap(queue)
                    if claims:
                        rescued += await self._rescue(claims)
            return rescued

    async def sweep_and_reconcile(self) -> None:
        with self._noting_redis_loss():
            # One pass per reconcile_interval across all processes: the mark lives that
            # long (a pass that outlasts it may overlap the next one; both are idempotent).
            # It used to live at least 5 s, which held the passes to one per 5 s whatever
            # the interval said.
            token = os.urandom(8).hex()
            ttl_ms = max(1, int(self.cfg.reconcile_interval * 1000))
            if not await self.dispatch.client.set(self.lock_key, token, nx=True, px=ttl_ms):
                return  # another process did this interval's pass
            await self.sweep_running()
            await self.reconcile_unconfirmed()
            if time.monotonic() >= self._next_full_pass:
                self._next_full_pass = time.monotonic() + self.cfg.full_reconcile_interval
                await self.reconcile()

    async def sweep_running(self) -> int:
        """Rescue running attempts older than a lease whose lease Redis does not hold.

        Looks at ``sweep_batch`` unfinished jobs per pass (whatever the backlog), going
        round all of them over the passes. Not while the index is younger than a lease (or this process lost Redis
        lately): a live worker takes its missing leases back within a heartbeat, and only
        the leases nobody took back are real losses."""
        age = await self.dispatch.index_age()
        if age is None or age < self.lease_ttl or self._quiet():
            return 0
        rows, self._sweep_after = await self.store.running_jobs_started_before(
            self.lease_ttl, self._sweep_after, self.cfg.sweep_batch)
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
            if e.state is JobState.FAILED:  # its last attempt's lease was lost
                metrics.DEAD_LETTERS.labels(e.queue).inc()
        moved = {str(e.id) for e in entries}
        requeued = [e for e in entries if e.state in DISPATCHABLE]
        if entries:
            log.warning("rescued %d jobs whose worker lost its lease (%d requeued)",
                        len(entries), len(requeued))
        unstarted = [c.id for c in claims if c.id not in moved]
        if unstarted:
            # Leased in Redis but never started in PostgreSQL (the worker died between
            # claim and start): back in the index now, not at the reconciler's next pass.
            requeued += await self.store.dispatchable_jobs(unstarted)
        if requeued:
            try:
                await self.dispatch.enqueue(requeued)
            except Exception:
                await note_unindexed(self.store, requeued)
                raise
        if entries:  # after the index: waiting API clients are told last
            await announce(self.dispatch, [e.id for e in entries])
        return len(entries)

    async def reconcile_unconfirmed(self) -> int:
        """Index the jobs whose enqueue was never confirmed (the Redis call failed, or
        the process died between its commit and the call): work in proportion to what is
        missing, whatever the backlog."""
        grace = self.cfg.unconfirmed_grace
        added = 0
        while True:
            notes, entries = await self.store.list_unindexed(grace, self.cfg.reconcile_batch)
            if not notes:
                break
            if entries:
                added += await self.dispatch.enqueue(entries)
            await self.store.clear_unindexed(notes)
            if len(notes) < self.cfg.reconcile_batch:
                break
        if added:
            metrics.JOBS_REINDEXED.inc(added)
            log.warning("indexed %d jobs whose enqueue had not been confirmed", added)
        return added

    async def reconcile(self) -> int:
        """Index in Redis every dispatchable job that is missing there (a pass over the
        whole backlog: when the index was lost, and rarely as a safety net)."""
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
