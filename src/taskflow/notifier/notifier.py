"""The notifier loops, one per channel: claim due outbox rows (SKIP LOCKED, so notifiers
share the work), deliver them through the channel's sink, record each attempt. Woken by
LISTEN/NOTIFY when the triggers write rows; otherwise each sleeps until its next retry is
due. A channel never waits on another: a broker away or a slow webhook holds up only the
deliveries of its own channel.

At-least-once: a claim lasts ``notify.claim_ttl``; a notifier that dies holding rows
leaves them to be claimed again when it expires. SIGTERM stops claiming, lets the batch
in hand finish for ``notify.shutdown_grace`` seconds and hands back the rest.
"""

from __future__ import annotations

import asyncio
import time
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence

import asyncpg

from taskflow import metrics
from taskflow.adapters.outbox import DEAD_LETTERS, Delivery, OutboxStore, Settlement
from taskflow.config import NotifySettings
from taskflow.notifier.backoff import Attempted, decide
from taskflow.notifier.sinks import Sink
from taskflow.supervise import cancel_and_wait, supervised

log = logging.getLogger(__name__)

CHANNEL = "taskflow_outbox"
"""The NOTIFY channel the outbox triggers signal on."""

OUTBOX_TROUBLE = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""PostgreSQL unreachable or refusing for now: retried, not a reason to stop."""


class _Lane:
    """One channel's deliveries: the batch in hand and what its NOTIFYs wake."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.wake = asyncio.Event()
        self.held: dict[int, Delivery] = {}  # claimed, not recorded yet
        # Attempts that ended, by row, until recorded: kept outside the delivering task so
        # that a shutdown that cancels it still records them (see _deliver_until_stopped).
        self.ended: dict[int, tuple[Delivery, Attempted]] = {}


class Notifier:
    def __init__(self, settings: NotifySettings, outbox: OutboxStore, database_url: str,
                 sinks: Sequence[Sink], *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.database_url = database_url
        self.sinks: Mapping[str, Sink] = {s.channel: s for s in sinks}
        self.channels = sorted(self.sinks)
        self.rng = rng or random.Random()
        self.lanes = {c: _Lane(c) for c in self.channels}
        self.listening = False
        self.registered = False

    async def run(self, stop: asyncio.Event) -> None:
        log.info("notifier delivering %s", ", ".join(
            f"{c} ({self.sinks[c].backend})" for c in self.channels))
        listener = asyncio.create_task(supervised("outbox listener", self._listen))
        gauge = asyncio.create_task(supervised("outbox gauge", self._measure))
        try:
            # A lane that fails stops the others (each hands back what it holds).
            async with asyncio.TaskGroup() as lanes:
                for lane in self.lanes.values():
                    lanes.create_task(self._loop(lane, stop))
        finally:
            await cancel_and_wait(listener, gauge)
            for sink in self.sinks.values():
                await sink.close()

    async def _register(self) -> None:
        """Tell the triggers whether dead letters have a consumer. Left registered when
        this notifier stops: dead letters must keep being written while notifiers
        restart. A notifier started with dlq.backend = none removes it (every notifier of
        a deployment shares one configuration)."""
        dlq = self.sinks.get("dead_letter")
        await self.outbox.register_sink(DEAD_LETTERS, dlq.backend if dlq else None)
        self.registered = True

    async def _loop(self, lane: _Lane, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self.registered:
                    await self._register()
                # Cleared before the claim, so a NOTIFY for rows committed after it
                # (while this batch is delivered) cuts the next sleep short.
                lane.wake.clear()
                batch = await self.outbox.claim(self.settings.batch_size,
                                                self.settings.claim_ttl, [lane.channel])
                if batch:
                    await self._deliver_until_stopped(lane, batch, stop)
                    backoff = 0.1
                    if len(batch) == self.settings.batch_size:
                        continue  # more are probably waiting
                wait = await self.outbox.next_due([lane.channel])
            except OUTBOX_TROUBLE as exc:
                log.warning("outbox unavailable (%r); retrying in %.1fs", exc, backoff)
                await self._sleep(None, backoff, stop)
                backoff = min(backoff * 2, 5.0)
                continue
            idle = self.settings.idle_wait if wait is None else min(max(wait, 0.0),
                                                                    self.settings.idle_wait)
            await self._sleep(lane, idle, stop)

    async def _sleep(self, lane: _Lane | None, seconds: float, stop: asyncio.Event) -> None:
        """Until ``seconds`` pass, ``stop`` is set or (with a ``lane``) a NOTIFY arrives."""
        if seconds <= 0:
            return
        waits = [asyncio.ensure_future(stop.wait())]
        if lane is not None:
            waits.append(asyncio.ensure_future(lane.wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _deliver_until_stopped(self, lane: _Lane, batch: list[Delivery],
                                     stop: asyncio.Event) -> None:
        lane.held = {d.id: d for d in batch}
        work = asyncio.create_task(self._deliver(lane, batch))
        stopping = asyncio.ensure_future(stop.wait())
        keeping = asyncio.create_task(self._keep_claim(lane, batch[0].token))
        try:
            await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # Shutting down: the batch in hand gets the grace period, then what is
                # left goes back to the outbox for another notifier.
                done, _ = await asyncio.wait([work], timeout=self.settings.shutdown_grace)
                if not done:
                    await cancel_and_wait(work)
            if work.done() and not work.cancelled() and work.exception() is not None:
                raise work.exception()  # type: ignore[misc]
        finally:
            stopping.cancel()
            await cancel_and_wait(work, keeping)  # work: ended already, unless we were cancelled
            # What went out is recorded, whatever cut the batch short (a record that was
            # under way is made again: the claim token makes the second one a no-op), and
            # only what did not go out is handed back, so only that is sent again.
            if lane.ended:
                try:
                    await self._record(lane, list(lane.ended.values()))
                except OUTBOX_TROUBLE as exc:
                    log.warning("could not record %d deliveries (%r); they are sent again "
                                "when their claim expires", len(lane.ended), exc)
            unsent = [d for d in lane.held.values() if d.id not in lane.ended]
            lane.held, lane.ended = {}, {}
            if unsent:
                await self._hand_back(unsent)

    async def _keep_claim(self, lane: _Lane, token: str) -> None:
        """While a batch is being delivered, extend the claim of its unsettled rows every
        third of ``claim_ttl``: only a notifier that died (or lost PostgreSQL for longer
        than that) lets another claim them."""
        ttl = self.settings.claim_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            if lane.held:
                try:
                    await self.outbox.extend_claim(list(lane.held), token, ttl)
                except OUTBOX_TROUBLE as exc:
                    log.warning("could not extend the claim of %d outbox rows (%r)",
                                len(lane.held), exc)

    async def _deliver(self, lane: _Lane, items: list[Delivery]) -> None:
        channel = lane.channel
        began = time.perf_counter()

        def ended(item: Delivery, result: Attempted) -> None:
            lane.ended.setdefault(item.id, (item, result))

        try:
            await self.sinks[channel].deliver(items, ended)
            metrics.NOTIFY_DURATION.labels(channel).observe(time.perf_counter() - began)
        except Exception as exc:  # a bug in a sink: retry (with backoff), do not lose rows
            log.exception("the %s sink failed on %d rows", channel, len(items))
            for item in items:
                ended(item, Attempted.retry(f"internal error: {exc!r}"))
        await self._record(lane, [lane.ended[i.id] for i in items if i.id in lane.ended])

    async def _record(self, lane: _Lane, ended: list[tuple[Delivery, Attempted]]) -> None:
        """Settle attempts that ended; they are no longer held."""
        channel = lane.channel
        settlements = [self._settlement(item, result) for item, result in ended]
        recorded = await self._settle(settlements)
        for (item, _), s in zip(ended, settlements):
            lane.ended.pop(s.id, None)
            lane.held.pop(s.id, None)
            if s.id not in recorded:
                continue  # recorded before (a record cut short, made again) or taken over
            metrics.NOTIFICATIONS.labels(channel, s.outcome).inc()
            if channel == "dead_letter" and s.outcome == "delivered":
                metrics.DEAD_LETTERS_PUBLISHED.inc()
            if s.outcome == "failed":
                log.warning("%s of %s to %s failed for good after %d attempts: %s", channel,
                            item.event, item.target, item.attempts, s.error)

    def _settlement(self, item: Delivery, result: Attempted) -> Settlement:
        # A dead letter never gives up: losing it would defeat the DLQ.
        limit = None if item.channel == "dead_letter" else self.settings.max_attempts
        decision = decide(result, item.attempts, limit, self.settings.retry, self.rng)
        return Settlement(item.id, item.token, decision.outcome, decision.delay, result.error,
                          result.target if decision.outcome == "retried" else None)

    async def _settle(self, settlements: list[Settlement]) -> set[int]:
        """Record outcomes (returns the rows recorded); PostgreSQL trouble is retried
        briefly (the deliveries are done, and a lost record means a duplicate once the
        claim expires)."""
        for attempt in range(5):
            try:
                return await self.outbox.settle(settlements)
            except OUTBOX_TROUBLE as exc:
                if attempt == 4:
                    raise
                log.warning("could not record %d deliveries (%r); retrying",
                            len(settlements), exc)
                await asyncio.sleep(0.2 * 2 ** attempt)

    async def _hand_back(self, items: list[Delivery]) -> None:
        try:
            await self.outbox.settle([Settlement(i.id, i.token, "handed_back") for i in items])
        except OUTBOX_TROUBLE as exc:
            log.warning("could not hand back %d outbox rows (%r); they are delivered when "
                        "their claim expires", len(items), exc)
        else:
            log.info("handed back %d undelivered outbox rows", len(items))

    async def _listen(self) -> None:
        """LISTEN on a connection of its own (the pool's are not kept per session);
        restarted by its supervisor when the connection drops."""
        conn = await asyncpg.connect(self.database_url)
        closed = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _: closed.set())
            await conn.add_listener(CHANNEL, lambda *_: self._wake_lanes())
            self.listening = True
            self._wake_lanes()  # rows may have arrived while nobody listened
            while not closed.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(closed.wait(), 5.0)
                if not closed.is_set():
                    await conn.execute("SELECT 1")  # notices a silently dropped link
            raise ConnectionError("the LISTEN connection closed")
        finally:
            self.listening = False
            conn.terminate()

    def _wake_lanes(self) -> None:
        for lane in self.lanes.values():
            lane.wake.set()

    async def _measure(self) -> None:
        while True:
            pending, oldest_age = await self.outbox.pending_stats()
            metrics.OUTBOX_PENDING.set(pending)
            metrics.OUTBOX_OLDEST.set(oldest_age)
            await asyncio.sleep(5.0)
