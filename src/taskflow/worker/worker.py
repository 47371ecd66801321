"""The worker: claims jobs in batches, runs them, records outcomes in batches.

Flow of one job: ``claim.lua`` takes its lease in Redis -> ``start_jobs`` moves it to
running in PostgreSQL (one statement per claim batch) -> the runner executes the handler
-> its outcome waits in a buffer that the flusher writes with ``finish_jobs`` (one
statement for everything that finished meanwhile: group commit) -> the leases are given
back and retries indexed in one Redis round trip. Leases are heartbeated from claim until
the outcome is durable, so a slow flush never lets a finished job be rescued.

A DAG dependent can skip the index: the flush whose outcome releases it may start it for
this worker in the same statement (``finish_and_start``, see ``_seats_for``); it runs at
once, and its lease is taken in the Redis round trip behind the flush (``adopt.lua``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import msgspec

from taskflow import logs, metrics
from taskflow.adapters.observe import Observer
from taskflow.adapters.postgres import PostgresStore
from taskflow.adapters.redis import Heartbeat, RedisDispatch, WakeListener
from taskflow.config import Settings
from taskflow.jobs import note_unindexed
from taskflow.models import Claim, DispatchEntry, Outcome, StartedJob
from taskflow.states import DISPATCHABLE, JobState
from taskflow.supervise import cancel_and_wait, every, supervised
from taskflow.worker.registry import JobContext, Registry
from taskflow.worker.runner import Runner

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"


class _Held:
    """A lease this worker holds: while the handler runs and until its outcome is stored."""

    __slots__ = ("claim", "queue", "task", "ctx", "cancel_requested", "has_dependents",
                 "node", "adopting")

    def __init__(self, claim: Claim, queue: str) -> None:
        self.claim = claim
        self.queue = queue
        self.has_dependents = False  # its success may release jobs
        self.node: str | None = None  # its name in its workflow
        # Started by a flush whose settle has not taken its lease yet: the heartbeat
        # leaves it alone (a missing lease is expected, not lost).
        self.adopting = False
        self.task: asyncio.Task[None] | None = None
        self.ctx: JobContext | None = None
        self.cancel_requested = False

    def stop(self) -> None:
        """Cancel the handler, and tell a sync handler (which cannot be interrupted)."""
        if self.ctx is not None and self.ctx.cancelled is not None:
            self.ctx.cancelled.set()
        if self.task is not None:
            self.task.cancel()


class Worker:
    """Serves ``queues`` with at most ``concurrency`` handlers running at once."""

    def __init__(
        self,
        settings: Settings,
        store: PostgresStore,
        dispatch: RedisDispatch,
        registry: Registry,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.worker
        self.store = store
        self.dispatch = dispatch
        self.queues = list(queues or self.cfg.queues)
        self._served = frozenset(self.queues)
        self.concurrency = concurrency or self.cfg.concurrency
        self.name = name or worker_name()
        self.lease_ms = int(self.cfg.lease_ttl * 1000)
        self.threads = ThreadPoolExecutor(self.cfg.sync_threads, thread_name_prefix="taskflow-job")
        self.runner = Runner(settings, registry, self.threads)
        self.wake = WakeListener(dispatch, self.queues, on_cancel=self._cancel_requested)
        self.held: dict[str, _Held] = {}  # job id -> lease held
        self.running = 0
        self.outcomes: list[Outcome] = []
        self._slot_freed = asyncio.Event()
        self._outcomes_ready = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._max_buffered = max(self.concurrency, self.cfg.claim_batch) * 2
        self._next_queue = 0
        self._round: asyncio.Future[tuple[int, int, int | None]] | None = None
        self._unstarted: dict[str, list[Claim]] = {}  # claims whose start_jobs failed
        # Seats promised to a claim round or a flush in flight (see _flush): counted as
        # taken until the jobs they start are running.
        self._reserved = 0
        # Queue -> Redis's clock at its last claim, if that claim emptied its ready set: a
        # flush may start the dependents it releases there (see _seats_for).
        self._drained: dict[str, int] = {}
        # Queue -> when (time.monotonic()) the earliest delayed job its last claim saw
        # comes due, by Redis's clock; a claim promotes it ahead of what a flush releases.
        self._due_at: dict[str, float] = {}
        # Queues with jobs a flush queued that its settle (behind it) has not indexed yet.
        self._indexing: dict[str, int] = {}
        # Flushes that offered seats and failed without knowing whether they committed:
        # (their jobs, their token prefix); see _return_unconfirmed_starts.
        self._maybe_started: list[tuple[list[uuid.UUID], str]] = []
        self._stopping = False
        self._settling: asyncio.Future[None] | None = None  # the last flush's Redis part
        self.presence = Observer(dispatch)
        metrics.WORKER_RUNNING.set_function(lambda: self.running)
        metrics.WORKER_SLOTS.set(self.concurrency)
        metrics.WORKER_FREE.set_function(lambda: self.concurrency - self.running)
        for queue in self.queues:
            # Series at 0 from the start, so the first dead letter or rescue is an
            # increase() an alert sees (a series born at 1 is not).
            metrics.DEAD_LETTERS.labels(queue)
            metrics.LEASES_RESCUED.labels(queue)

    # -- the main loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down gracefully (see :meth:`_shutdown`)."""
        logs.bind(worker=self.name)  # the duties and job tasks below inherit it
        duties = [
            asyncio.create_task(supervised("wake listener", self.wake.run)),
            asyncio.create_task(supervised("outcome flusher", self._flush_forever)),
            asyncio.create_task(supervised("lease heartbeat", self._heartbeat_forever)),
        ]
        claimer = asyncio.create_task(supervised("claimer", self._claim_forever))
        log.info("worker %s serving %s with concurrency %d", self.name, self.queues,
                 self.concurrency)
        try:
            try:
                await stop.wait()
            finally:
                self._stopping = True  # flushes start nothing from now on
                await cancel_and_wait(claimer)
                if self._round is not None:
                    # A claim round is never cut short (see _claim): let it finish, so
                    # what it started is run or handed back below.
                    await asyncio.gather(self._round, return_exceptions=True)
                await self._shutdown()
        finally:
            # Even when the shutdown itself is cancelled: no duty outlives the worker.
            await cancel_and_wait(*duties)
            self.threads.shutdown(wait=False, cancel_futures=True)
            try:
                await self.presence.leave(self.name)
            except Exception:  # Redis away: the entry ages out by itself
                log.warning("could not remove this worker from the presence registry")

    async def _claim_forever(self) -> None:
        while True:
            free = self._free()
            if free <= 0 or len(self.outcomes) >= self._max_buffered:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self.wake.event.clear()
            left, next_due = await self._claim(min(free, self.cfg.claim_batch))
            if not left:
                continue  # the round filled its seats: more may be ready
            # The round emptied every ready set it served. What is indexed from now on
            # wakes us (enqueue.lua publishes after its ZADD, and the event was cleared
            # before the claim), so an empty round right after it would find nothing; it
            # would only hold the free seats away from a flush starting what it releases.
            wait = self.cfg.max_idle_wait
            if next_due is not None:  # by Redis's clock (see _claim_queue), not ours
                wait = min(wait, max(0.0, next_due - time.monotonic()))
            if wait > 0:
                try:
                    await asyncio.wait_for(self.wake.event.wait(), wait)
                except TimeoutError:
                    pass

    def _free(self) -> int:
        return self.concurrency - self.running - self._reserved

    async def _claim(self, limit: int) -> tuple[int, float | None]:
        """One claim round over the queues, starting where the last one stopped (so no
        queue starves another). Returns (seats it left unfilled, when the next delayed job
        comes due: a time.monotonic() deadline, by Redis's clock)."""
        next_due: float | None = None
        n = len(self.queues)
        reached = set()
        try:
            for i in range(n):
                if i:
                    # The seats the last queue's claim did not fill were handed back when
                    # its task ended: a flush may have taken some before we came back here.
                    limit = min(limit, self._free())
                if limit <= 0:
                    break
                queue = self.queues[(self._next_queue + i) % n]
                # Shielded: cancelling the claimer (shutdown) must not cut a round between
                # the claim in Redis and start_jobs in PostgreSQL, or after start_jobs
                # committed: jobs moved to running would be neither run nor handed back, and
                # their rescue a lease later would charge each a lost attempt.
                # The seats are held from now, not from when the round's task first runs: a
                # flush scheduled in between must see them taken (see _claim_queue).
                self._reserved += limit
                reached.add(queue)
                self._round = asyncio.ensure_future(self._claim_queue(queue, limit))
                started, claimed, due = await asyncio.shield(self._round)
                if due is not None:
                    next_due = due if next_due is None else min(next_due, due)
                limit -= claimed
        finally:
            # Only the queues this round emptied count as drained: one it did not reach
            # (its seats filled first) may have had jobs indexed since its last claim,
            # the wake event that told of them being cleared for this round. (A queue
            # keeps its entry while the round claims: what was indexed since shows by
            # Redis's time.)
            for queue in self.queues:
                if queue not in reached:
                    self._drained.pop(queue, None)
        self._next_queue = (self._next_queue + 1) % n
        return limit, next_due

    async def _claim_queue(self, queue: str, limit: int) -> tuple[int, int, float | None]:
        """(jobs started, jobs claimed, when its next delayed job comes due) of one
        queue; see _claim. ``limit`` seats were reserved by the caller; they are held
        from the claim until its jobs run (or go back), so that a flush does not give
        them to the jobs it releases meanwhile."""
        sent = time.monotonic()
        try:
            result = await self.dispatch.claim(queue, limit, self.lease_ms)
        finally:
            self._reserved -= limit
        # Due times are Redis's clock: how long from the claim, measured from before it
        # (never later than Redis has it due), whatever this machine's clock says.
        now_ms = result.at_us / 1000 if result.at_us else time.time() * 1000  # 0: unknown
        due_at = (None if result.next_due_ms is None
                  else sent + (result.next_due_ms - now_ms) / 1000)
        if len(result.claims) < limit:
            self._drained[queue] = result.at_us
            if due_at is None:
                self._due_at.pop(queue, None)
            else:
                self._due_at[queue] = due_at
        else:
            self._drained.pop(queue, None)
        if not result.claims:
            return 0, 0, due_at
        self._reserved += len(result.claims)
        try:
            started = await self._start(queue, result.claims)
        finally:
            self._reserved -= len(result.claims)
        return started, len(result.claims), due_at

    async def _start(self, queue: str, claims: list[Claim]) -> int:
        for c in claims:
            self.held[c.id] = _Held(c, queue)
        try:
            started = await self.store.start_jobs(claims, self.name)
        except BaseException:
            # PostgreSQL failed: whether start_jobs committed is unknown, and the jobs
            # left the ready set with the claim. Keep their leases (heartbeated, so nobody
            # rescues them and charges an attempt) and give them back once PostgreSQL
            # answers (see _return_unstarted).
            self._unstarted.setdefault(queue, []).extend(claims)
            raise
        started_ids = {str(j.id) for j in started}
        if len(started_ids) < len(claims):
            # Cancelled or finished since Redis indexed them: not ours to run.
            await self._release_unstarted(
                queue, [c for c in claims if c.id not in started_ids]
            )
        upstream, too_large = await self._upstreams(started)
        self._launch(started, upstream, too_large)
        return len(started)

    async def _upstreams(self, started: list[StartedJob]) -> tuple[dict, dict]:
        """The upstream results of the started jobs that have upstreams (see
        PostgresStore.upstream_results). If PostgreSQL fails, the jobs are running there
        but will not run here: they are handed back (no attempt spent)."""
        fan_in = [j.id for j in started if j.upstream_count]
        if not fan_in:
            return {}, {}
        try:
            return await self.store.upstream_results(fan_in, self.cfg.max_upstream_bytes)
        except BaseException:
            for job in started:
                held = self.held[str(job.id)]
                self._unstarted.setdefault(held.queue, []).append(held.claim)
            raise

    def _launch(self, started: list[StartedJob], upstream: dict, too_large: dict) -> None:
        """Run the started jobs (each holds an entry in ``held``)."""
        now = time.time()
        for job in started:
            queue = job.queue
            if job.run_at is not None and job.run_at.tzinfo is not None:  # not +-infinity
                metrics.JOB_WAIT.labels(queue).observe(max(0.0, now - job.run_at.timestamp()))
            held = self.held[str(job.id)]
            held.has_dependents = job.has_dependents
            held.node = job.node
            if job.id in too_large:
                self._refuse(job, f"its upstream jobs' results add up to more than "
                             f"{self.cfg.max_upstream_bytes} bytes "
                             f"({too_large[job.id]} loaded before stopping; "
                             "worker.max_upstream_bytes)")
                continue
            self.running += 1
            metrics.JOBS_STARTED.labels(queue, job.task).inc()
            held.task = asyncio.create_task(self._run(job, held, upstream.get(job.id)),
                                            name=f"job {job.id}")

    def _refuse(self, job: StartedJob, why: str) -> None:
        """End an attempt without running its handler (for good: it would not change)."""
        log.error("job %s fails without running: %s", job.id, why)
        metrics.JOBS_FINISHED.labels(job.queue, job.task, "failed").inc()
        metrics.DEAD_LETTERS.labels(job.queue).inc()
        metrics.JOB_END_TO_END.labels(job.queue).observe(_age(job))
        self.outcomes.append(Outcome(job.id, job.lease_token, JobState.FAILED, "failed", 0.0,
                                     error=f"not run: {why}"))
        self._outcomes_ready.set()

    async def _return_unstarted(self) -> None:
        """Give back claims whose start failed (see _start): a started one goes back to
        queued without spending an attempt (hand_back_jobs, fenced by its token), the
        others are indexed again; then their leases go. Retried by every heartbeat until
        PostgreSQL and Redis answer."""
        for queue, claims in list(self._unstarted.items()):
            entries = await self.store.hand_back_jobs(claims)
            back = {str(e.id) for e in entries}
            rest = [c.id for c in claims if c.id not in back]
            if rest:
                entries += await self.store.dispatchable_jobs(rest)
            requeued = [e for e in entries if e.state in DISPATCHABLE]
            del self._unstarted[queue]
            for c in claims:
                self.held.pop(c.id, None)
            self._indexed_here(requeued)
            try:
                await self.dispatch.release(queue, claims)
                await self.dispatch.enqueue(requeued)
            except Exception:
                await note_unindexed(self.store, requeued)
                raise
            log.info("gave back %d jobs whose start had failed", len(claims))

    async def _release_unstarted(self, queue: str, claims: list[Claim]) -> None:
        for c in claims:
            self.held.pop(c.id, None)
        try:
            await self.dispatch.release(queue, claims)
        except Exception:
            log.exception("could not give back %d leases; they expire by themselves",
                          len(claims))

    async def _run(self, job: StartedJob, held: _Held, upstream: dict | None) -> None:
        # This task's own context: every record logged while the job runs carries these.
        logs.bind_job(job.id, job.task, job.queue, job.attempts, job.tenant)
        began = time.perf_counter()
        try:
            outcome = await self.runner.execute(
                job, ctx_hook=lambda ctx: setattr(held, "ctx", ctx), upstream=upstream)
        except asyncio.CancelledError:
            if not held.cancel_requested:
                return  # lease lost or shutdown: no outcome of ours to record
            outcome = Outcome(job.id, job.lease_token, JobState.CANCELLED, "cancelled",
                              time.perf_counter() - began, error="cancelled while running")
        finally:
            self.running -= 1
            self._slot_freed.set()
        _observe(job, outcome)
        self.outcomes.append(outcome)
        self._outcomes_ready.set()

    def _cancel_requested(self, job_id: str) -> None:
        held = self.held.get(job_id)
        if held is None or held.task is None or held.task.done() or held.cancel_requested:
            return
        log.info("cancelling running job %s on request", job_id)
        held.cancel_requested = True
        held.stop()

    # -- recording outcomes --------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await self._outcomes_ready.wait()
            await self._flush()

    async def _flush(self) -> None:
        """Write every buffered outcome in one statement, then settle Redis. One flush at
        a time: the flusher and the shutdown both call this, and the shutdown must wait
        for a batch the flusher is writing."""
        async with self._flush_lock:
            self._outcomes_ready.clear()
            batch, self.outcomes = self.outcomes, []
            if not batch:
                return
            seats, queues = self._seats_for(batch)
            prefix = os.urandom(8).hex() + "."
            self._reserved += seats
            try:
                try:
                    moved, started, in_batch = await self._record(batch, queues, seats, prefix)
                except BaseException:
                    # Keep them: the leases are still heartbeated, the next flush retries.
                    self.outcomes[:0] = batch
                    self._outcomes_ready.set()
                    if seats:
                        self._maybe_started.append(([o.id for o in batch], prefix))
                    raise
                at_hand = self._nodes_at_hand(batch) if started else {}
                released, requeued = self._recorded(batch, moved)
                # What this flush queued (dependents past its seats, retries) is indexed
                # only by its settle, behind it: until then no flush starts jobs in their
                # queues ahead of them (after it, the wake event does that job).
                indexing = {e.queue for e in requeued}
                for queue in indexing:
                    self._indexing[queue] = self._indexing.get(queue, 0) + 1
                try:
                    if started:
                        # They run before their leases are in Redis: PostgreSQL holds
                        # their tokens, so no other worker can claim them (they were never
                        # indexed) nor record their outcome; if this process dies first,
                        # the rescuer's sweep finds them running without a lease.
                        loading = self._begin(started, in_batch, at_hand)
                        if loading is not None:
                            # Those it could not run are the heartbeat's to give back (see
                            # _return_unstarted): their leases are not taken, or the
                            # settle, behind, could take one after the job went back.
                            given_back = {j.id for j in await loading}
                            started = [j for j in started if j.id not in given_back]
                except BaseException:
                    # Cut short (cancelled while loading): what did not start running
                    # goes back by the heartbeat, the rest keeps its lease from it.
                    self._give_back_unrun(started)
                    started = []
                    raise
                finally:
                    # Redis is settled behind this flush, in flush order, while the next
                    # batch runs and is written.
                    self._settling = asyncio.ensure_future(self._settle(
                        self._settling, released, requeued,
                        {o.id for o in batch} | {e.id for e in moved}, started, indexing))
            finally:
                if seats:
                    self._reserved -= seats
                    self._slot_freed.set()

    def _give_back_unrun(self, started: list[StartedJob]) -> None:
        for held in self._stop_adopting(started):
            if held.task is None:
                self._unstarted.setdefault(held.queue, []).append(held.claim)

    def _stop_adopting(self, started: list[StartedJob]) -> list[_Held]:
        """The heartbeat holds these jobs' leases from now on (their settle has run, or
        will not take them); returns the entries still this attempt's."""
        mine = []
        for job in started:
            held = self.held.get(str(job.id))
            if held is not None and held.claim.token == job.lease_token:
                held.adopting = False
                mine.append(held)
        return mine

    def _seats_for(self, batch: list[Outcome]) -> tuple[int, list[str]]:
        """How many of the dependents a flush releases it may start itself, in the same
        statement (a DAG's next hop then needs no claim round and no start statement of
        its own), and from which queues.

        Only when a job of the batch succeeded with dependents, not while stopping, and
        only in queues where no ready job could outrank them: the last claim emptied
        their ready set, no delayed job it saw there has come due since (by Redis's
        clock), nothing was indexed since as far as the wake-up channel tells
        (enqueue.lua publishes after its ZADD, with Redis's time; only a message still on
        its way goes unseen), nor by this worker (its settles and give-backs), and no job
        of the batch is retried there at once. The flush then claims for this worker as
        its claimer would at that moment. The seats are held against the claimer until
        the started jobs run."""
        if (self._stopping or not self.cfg.flush_starts
                or not any(self._may_release(o) for o in batch)):
            return 0, []
        now = time.monotonic()
        # A job of the batch retried at once is ready again from this very flush: it may
        # outrank them too.
        retried = {held.queue for o in batch if o.state is JobState.QUEUED
                   and (held := self.held.get(str(o.id))) is not None}
        # A delayed job that came due (even while the round that drained its queue was
        # still claiming others) is ready for the next claim: it may outrank them.
        queues = [q for q, at in self._drained.items()
                  if not self._indexing.get(q) and not self.wake.indexed_since(q, at)
                  and self._due_at.get(q, math.inf) > now and q not in retried]
        seats = min(self._free(), self.cfg.claim_batch) if queues else 0
        return (seats, queues) if seats > 0 else (0, [])

    def _may_release(self, outcome: Outcome) -> bool:
        held = self.held.get(str(outcome.id))
        return (outcome.state is JobState.SUCCEEDED and held is not None
                and held.has_dependents)

    async def _record(
        self, batch: list[Outcome], queues: Sequence[str] = (), seats: int = 0,
        prefix: str = "",
    ) -> tuple[list[DispatchEntry], list[StartedJob],
               dict[uuid.UUID, dict[uuid.UUID, str | None]]]:
        """Store outcomes: (jobs that moved, jobs started for this worker, each started
        job's upstreams among ``batch`` with their stored results); see
        PostgresStore.finish_and_start."""
        try:
            if seats:
                return await self.store.finish_and_start(batch, queues, seats, self.name,
                                                         prefix)
            return await self.store.finish_jobs(batch), [], {}
        except asyncpg.DataError as exc:
            # A value PostgreSQL refuses (an untranslatable character, an interval out of
            # range) must not hold up the other outcomes: record them one by one, and a
            # refused one as a failure that says why. (If the refused statement would have
            # started dependents, it did not: nothing committed.)
            if len(batch) > 1:
                moved = []
                for outcome in batch:
                    moved += (await self._record([outcome]))[0]
                return moved, [], {}
            [bad] = batch
            log.error("job %s: PostgreSQL refused its outcome: %s", bad.id, exc)
            failed = Outcome(bad.id, bad.token, JobState.FAILED, "failed", bad.duration,
                             error=f"the attempt's outcome could not be stored: {exc}"
                             .replace("\x00", "\\x00"))
            try:
                return await self.store.finish_jobs([failed]), [], {}
            except asyncpg.DataError:
                log.exception("job %s: dropping an outcome PostgreSQL refuses twice; the "
                              "job runs again when its lease expires", bad.id)
                return [], [], {}

    def _recorded(
        self, batch: list[Outcome], moved: list[DispatchEntry],
    ) -> tuple[dict[str, list[Claim]], list[DispatchEntry]]:
        """The batch is in PostgreSQL: its leases to give back, by queue, and the jobs to
        index again (retries, released dependents not started here)."""
        metrics.FLUSH_BATCH.observe(len(batch))
        own = {o.id for o in batch}
        fenced = len(batch) - sum(1 for e in moved if e.id in own)
        if fenced:
            metrics.OUTCOMES_REFUSED.inc(fenced)
            log.warning("%d outcomes refused: their leases were taken over", fenced)
        released: dict[str, list[Claim]] = {}
        for o in batch:
            key = str(o.id)
            held = self.held.get(key)
            # Only this attempt's lease: the job may have been claimed again since.
            if held is not None and held.claim.token == o.token:
                del self.held[key]
                released.setdefault(held.queue, []).append(held.claim)
        self._slot_freed.set()
        return released, [e for e in moved if e.state in DISPATCHABLE]

    async def _settle(
        self, previous: asyncio.Future[None] | None, released: dict[str, list[Claim]],
        requeued: list[DispatchEntry], changed: set[uuid.UUID], started: list[StartedJob],
        indexing: Sequence[str] | set[str] = (),
    ) -> None:
        """After a flush, once the flush before it has settled: give back the leases of
        recorded (or fenced) attempts, take those of the jobs it started, index what runs
        again, and tell waiting API clients what changed (one Redis round trip). Then
        ``indexing`` (the queues of what it indexes) no longer holds off flush starts."""
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            taken = await self.dispatch.settle(released, requeued, changed, started,
                                               self.lease_ms)
        except Exception:
            # Outcomes are durable; leases expire by themselves and the reconciler indexes
            # the retries (noted for it here), so this costs only latency. The heartbeat
            # takes the started jobs' leases once Redis answers.
            log.exception("could not settle %d outcomes in Redis", len(changed))
            if requeued:
                await note_unindexed(self.store, requeued)
        else:
            for job_id in taken:  # rescued and claimed again while this settle was late
                self._abandon(job_id)
            if any(e.state is JobState.QUEUED and e.queue in self._served
                   for e in requeued):
                # Released dependents (or retries) for our own queues: claim them now
                # rather than after our own wake-up message has gone round Redis.
                self.wake.event.set()
        finally:
            for queue in indexing:
                self._indexing[queue] -= 1
                # Indexed here (or to be, by the reconciler): no longer known to be empty,
                # from now on rather than once the wake-up message comes round (see
                # _indexed_here); the next claim tells.
                self._drained.pop(queue, None)
            self._stop_adopting(started)  # leased now, or the heartbeat's to take back

    def _nodes_at_hand(self, batch: list[Outcome]) -> dict[uuid.UUID, str | None]:
        """The node names of the batch's successes, for the jobs they release (their
        results come back from PostgreSQL as it stored them: see _begin)."""
        at_hand = {}
        for o in batch:
            held = self.held.get(str(o.id))
            if o.state is JobState.SUCCEEDED and held is not None:
                at_hand[o.id] = held.node
        return at_hand

    def _begin(
        self, started: list[StartedJob],
        in_batch: dict[uuid.UUID, dict[uuid.UUID, str | None]],
        at_hand: dict[uuid.UUID, str | None],
    ) -> asyncio.Future[list[StartedJob]] | None:
        """Run the jobs a flush started whose upstream results are all at hand (their
        upstreams ended in that flush), and load the others' first: returns the load
        (see _load_and_launch)."""
        metrics.FLUSH_STARTS.inc(len(started))
        upstream: dict[uuid.UUID, dict[str, Any]] = {}
        too_large: dict[uuid.UUID, int] = {}
        now, later = [], []
        for job in started:
            held = self.held[str(job.id)] = _Held(Claim(str(job.id), job.lease_token),
                                                  job.queue)
            held.adopting = True
            ups = in_batch.get(job.id) or {}
            if len(ups) != job.upstream_count or not all(u in at_hand for u in ups):
                later.append(job)
                continue
            results, size = _upstream_results(ups, at_hand,
                                              self.cfg.max_upstream_bytes)
            if results is None:
                too_large[job.id] = size
            else:
                upstream[job.id] = results
            now.append(job)
        self._launch(now, upstream, too_large)
        return asyncio.ensure_future(self._load_and_launch(later)) if later else None

    async def _load_and_launch(self, started: list[StartedJob]) -> list[StartedJob]:
        """Load the started jobs' upstream results and run them; returns those that
        will not run here (PostgreSQL failed: the heartbeat hands them back)."""
        try:
            upstream, too_large = await self._upstreams(started)
        except Exception:
            # _upstreams gave them to _unstarted: the heartbeat hands them back.
            log.exception("could not load the upstream results of %d jobs this worker "
                          "started; handing them back", len(started))
            # Not to be adopted (see _flush): until they go back, the heartbeat holds
            # their leases, as for claimed jobs whose start failed, so that no sweep takes
            # them for lost attempts (and fails those on their last one).
            self._stop_adopting(started)
            return started
        self._launch(started, upstream, too_large)
        return []

    def _indexed_here(self, entries: Sequence[DispatchEntry]) -> None:
        """This worker puts jobs back in line: their queues are no longer known to be
        empty, from now on rather than once the wake-up message comes round (until the
        next claim, no flush starts jobs ahead of them)."""
        for e in entries:
            self._drained.pop(e.queue, None)
        if entries:
            self.wake.event.set()

    async def _return_unconfirmed_starts(self) -> None:
        """A flush that offered seats failed without knowing whether it committed: the
        jobs it may have started (running under its token prefix, with no lease and
        nobody to run them) go back in line, no attempt spent. Retried by every heartbeat
        until PostgreSQL answers."""
        while self._maybe_started:
            ids, prefix = self._maybe_started[0]
            claims = await self.store.started_by_flush(ids, prefix)
            if claims:
                entries = await self.store.unstart_jobs(claims)
                requeued = [e for e in entries if e.state in DISPATCHABLE]
                self._indexed_here(requeued)
                try:
                    await self.dispatch.enqueue(requeued)
                except Exception:
                    await note_unindexed(self.store, requeued)
                    raise
                log.warning("put back %d jobs a failed flush had started", len(entries))
            self._maybe_started.pop(0)

    # -- leases --------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        await every(self.cfg.heartbeat_interval, self._heartbeat)

    async def _heartbeat(self) -> None:
        by_queue: dict[str, list[Claim]] = {}
        for held in list(self.held.values()):
            if not held.adopting:
                by_queue.setdefault(held.queue, []).append(held.claim)
        for queue, claims in by_queue.items():
            for i in range(0, len(claims), 1000):
                beat = await self.dispatch.extend(queue, claims[i : i + 1000], self.lease_ms)
                for job_id in beat.lost:
                    self._abandon(job_id)
                if beat.retaken or beat.cancel:
                    await self._check_with_postgres(queue, beat)
        if self._unstarted:
            try:
                await self._return_unstarted()
            except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
                log.warning("could not give back jobs whose start failed yet (%r)", exc)
        if self._maybe_started:
            try:
                await self._return_unconfirmed_starts()
            except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
                log.warning("could not look for jobs a failed flush started yet (%r)", exc)
        # After the leases: "workers alive" for the metrics (taskflow.adapters.observe).
        await self.presence.heartbeat(self.name, self.queues, 3 * self.cfg.heartbeat_interval)

    async def _check_with_postgres(self, queue: str, beat: Heartbeat) -> None:
        """Redis lost leases we held (flushed, restarted empty) and the heartbeat took them
        back, or it found cancel markers: PostgreSQL says which attempts are still ours
        and which cancellations stand (a marker can outlive a cancel that a retry undid)."""
        asked = [self.held[i].claim for i in {*beat.retaken, *beat.cancel} if i in self.held]
        current = await self.store.running_attempts(asked)
        given_up = []
        lost = 0
        for job_id in beat.retaken:
            held = self.held.get(job_id)
            if held is None or held.task is None:
                # Not started yet (start_jobs decides whether it is ours), or started by
                # a flush and going back unrun: the heartbeat holds its lease, which it
                # never had (see _load_and_launch): not lost by Redis.
                continue
            lost += 1
            if job_id in current:
                metrics.LEASES_RETAKEN.labels(queue).inc()
            else:
                given_up.append(held.claim)
        if lost:
            log.warning("Redis had lost %d of our leases; took back %d that PostgreSQL "
                        "says are still ours", lost, lost - len(given_up))
        if given_up:
            # Rescued or ended meanwhile: not ours. Give back what we just took.
            await self.dispatch.release(queue, given_up)
            for claim in given_up:
                self._abandon(claim.id)
        for job_id in beat.cancel:
            if current.get(job_id):
                self._cancel_requested(job_id)

    def _abandon(self, job_id: str) -> None:
        """Our lease on this job is gone: stop its handler; its outcome would be fenced."""
        held = self.held.pop(job_id, None)
        if held is None:
            return
        log.warning("lost the lease on job %s; stopping its handler", job_id)
        held.stop()

    # -- shutdown ------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Claiming has stopped. Let running handlers finish within the grace period, hand
        the rest back so another worker runs them at once, and store every outcome."""
        async with self._flush_lock:
            pass  # a flush in progress may start jobs; later ones start none (_stopping)
        tasks = [h.task for h in self.held.values() if h.task is not None and not h.task.done()]
        if tasks:
            log.info("waiting up to %.0fs for %d running jobs", self.cfg.shutdown_grace,
                     len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=self.cfg.shutdown_grace)
        else:
            pending = set()
        unfinished: dict[str, list[Claim]] = {}
        for held in list(self.held.values()):
            if held.task in pending:
                held.stop()
                unfinished.setdefault(held.queue, []).append(held.claim)
                self.held.pop(held.claim.id)
        if pending:
            # A handler that swallows its cancellation must not hold the exit for ever.
            _, stuck = await asyncio.wait(pending, timeout=5.0)
            if stuck:
                log.error("%d handlers ignored cancellation; exiting without them", len(stuck))
        await self._drain_outcomes()
        for queue, claims in unfinished.items():
            await self._hand_back(queue, claims)
        if self._unstarted:
            try:
                await self._return_unstarted()
            except Exception:
                log.exception("could not give back %d jobs whose start failed; the reaper "
                              "requeues them when their leases expire",
                              sum(map(len, self._unstarted.values())))
        if self._maybe_started:
            try:
                await self._return_unconfirmed_starts()
            except Exception:
                log.exception("could not look for jobs a failed flush started; the "
                              "rescuer's sweep requeues them a lease after their start")

    async def _drain_outcomes(self, attempts: int = 10) -> None:
        try:
            for attempt in range(attempts):
                try:
                    await self._flush()  # after any flush in progress, the rest
                except Exception:
                    log.exception("could not store outcomes at shutdown (try %d)",
                                  attempt + 1)
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                    continue
                if not self.outcomes:
                    return
            if self.outcomes:
                log.error("%d outcomes not stored; their jobs run again when their leases "
                          "expire", len(self.outcomes))
        finally:
            if self._settling is not None:  # the leases go back before we exit
                await asyncio.gather(self._settling, return_exceptions=True)

    async def _hand_back(self, queue: str, claims: list[Claim]) -> None:
        try:
            entries = await self.store.hand_back_jobs(claims)
        except Exception:
            log.exception("could not hand back %d jobs; they run again when their leases "
                          "expire", len(claims))
            return
        requeued = [e for e in entries if e.state in DISPATCHABLE]
        self._indexed_here(requeued)
        try:
            await self.dispatch.release(queue, claims)
            await self.dispatch.enqueue(requeued)
            log.info("handed back %d jobs of queue %s", len(entries), queue)
        except Exception:
            log.exception("handed back %d jobs but could not index them in Redis; the "
                          "reconciler will", len(requeued))
            await note_unindexed(self.store, requeued)


def _age(job: StartedJob) -> float:
    """Seconds since the job was created: its id is a UUIDv7, whose first 48 bits are
    the creation time in Unix milliseconds (taskflow.ids)."""
    return max(0.0, time.time() - (job.id.int >> 80) / 1000)


def _observe(job: StartedJob, outcome: Outcome) -> None:
    """Count and log how an attempt ended, at the level a person looks for it."""
    metrics.JOBS_FINISHED.labels(job.queue, job.task, outcome.outcome).inc()
    metrics.JOB_DURATION.labels(job.queue, job.task).observe(outcome.duration)
    if outcome.outcome == "retried":
        metrics.JOB_RETRIES.labels(job.queue, job.task).inc()
        log.info("attempt %d of %d failed, retrying in %.1fs: %s", job.attempts,
                 job.max_attempts, outcome.delay or 0.0, outcome.error)
        return
    metrics.JOB_END_TO_END.labels(job.queue).observe(_age(job))
    if outcome.outcome == "failed":
        metrics.DEAD_LETTERS.labels(job.queue).inc()
        log.warning("job failed for good after %d attempts: %s", job.attempts, outcome.error)
    elif outcome.outcome == "cancelled":
        log.info("job cancelled while running")
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("job succeeded in %.3fs", outcome.duration)


def _upstream_results(
    upstreams: dict[uuid.UUID, str | None], nodes: dict[uuid.UUID, str | None],
    max_bytes: int,
) -> tuple[dict[str, Any] | None, int]:
    """A job's upstream results (their stored JSON text, by id) as
    PostgresStore.upstream_results gives them (keyed by node name, else by id; at most
    ``max_bytes`` of JSON, counted in id order): (results, bytes), or (None, bytes loaded
    before stopping) when over."""
    results: dict[str, Any] = {}
    size = 0
    for upstream in sorted(upstreams):
        node, text = nodes[upstream], upstreams[upstream]
        size += len(text.encode()) if text is not None else 0
        if size > max_bytes:
            return None, size
        results[node or str(upstream)] = None if text is None else msgspec.json.decode(text)
    return results, size
