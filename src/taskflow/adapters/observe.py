"""What the metrics read from the stores: queue sizes and the oldest ready job from the
Redis dispatch index (``queue_stats.lua``), blocked jobs from PostgreSQL, and the worker
presence hash that says which workers are alive.

Presence: every worker writes ``HSET <prefix>:workers <name> "<deadline ms> <queues>"``
with each lease heartbeat (deadline = now + 3 heartbeat intervals) and deletes its field
when it stops. Readers count the fields whose deadline is ahead and delete the fields of
workers dead for more than :data:`FORGET_AFTER_MS` (killed without a goodbye). One hash,
one ``HGETALL`` per refresh: its size is the number of workers, not of jobs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources

import asyncpg
import msgspec

from taskflow.adapters.redis import RedisDispatch
from taskflow.adapters.sql import QUERIES

FORGET_AFTER_MS = 3_600_000
MAX_PRIORITY_BANDS = 32


class QueueSizes(msgspec.Struct, frozen=True):
    """One queue's jobs in the dispatch index, read at ``now_ms`` (Redis's clock)."""

    ready: int
    scheduled: int
    running: int
    oldest_ready_due_ms: int | None
    now_ms: int


class LiveWorker(msgspec.Struct, frozen=True):
    name: str
    queues: tuple[str, ...]


class Observer:
    """Reads for :mod:`taskflow.stats`; the worker's presence writes."""

    def __init__(self, dispatch: RedisDispatch, pool: asyncpg.Pool | None = None) -> None:
        self.dispatch = dispatch
        self.pool = pool
        self.presence_key = f"{dispatch.prefix}:workers"
        text = resources.files("taskflow.adapters").joinpath("lua", "queue_stats.lua")
        self._stats = dispatch.client.register_script(text.read_text())

    async def queue_sizes(self, queues: Sequence[str]) -> dict[str, QueueSizes]:
        """One script call per queue, all in one round trip."""
        async with self.dispatch.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                k = self.dispatch.keys(queue)
                await self._stats(keys=[k.ready, k.delayed, k.inflight],
                                  args=[MAX_PRIORITY_BANDS], client=pipe)
            rows = await pipe.execute()
        return {q: QueueSizes(int(r[0]), int(r[1]), int(r[2]),
                              None if int(r[3]) < 0 else int(r[3]), int(r[4]))
                for q, r in zip(queues, rows)}

    async def blocked_counts(self, scan_limit: int) -> dict[str, int]:
        """Blocked jobs by queue among at most ``scan_limit`` unfinished jobs."""
        if self.pool is None:
            return {}
        rows = await self.pool.fetch(QUERIES["blocked_counts"], scan_limit)
        return {r["queue"]: r["blocked"] for r in rows}

    async def heartbeat(self, worker: str, queues: Sequence[str], ttl: float) -> None:
        deadline = int((time.time() + ttl) * 1000)
        await self.dispatch.client.hset(self.presence_key, worker,
                                        f"{deadline} {','.join(queues)}")

    async def leave(self, worker: str) -> None:
        await self.dispatch.client.hdel(self.presence_key, worker)

    async def live_workers(self) -> list[LiveWorker]:
        entries = await self.dispatch.client.hgetall(self.presence_key)
        now = int(time.time() * 1000)
        live, dead = [], []
        for name, value in entries.items():
            deadline, _, queues = value.partition(" ")
            try:
                due = int(deadline)
            except ValueError:
                dead.append(name)
                continue
            if due >= now:
                live.append(LiveWorker(name, tuple(q for q in queues.split(",") if q)))
            elif now - due > FORGET_AFTER_MS:
                dead.append(name)
        if dead:
            await self.dispatch.client.hdel(self.presence_key, *dead)
        return live
