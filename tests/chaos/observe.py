"""How the harness watches the system under test from outside: its own PostgreSQL
connection (reopened after a restart) and Redis clients, the jobs a fault can hit, and
when the system has recovered from a fault."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from tests.chaos import checks
from tests.chaos.workload import QUEUES

log = logging.getLogger("chaos")
T = TypeVar("T")

# What a server that is restarting answers: worth another try.
TRANSIENT = (OSError, ConnectionError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
             asyncpg.exceptions.OperatorInterventionError, asyncpg.InterfaceError,
             redis_errors.ConnectionError, redis_errors.TimeoutError,
             redis_errors.BusyLoadingError)


async def retrying(what: str, call: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """``call()`` until it stops failing with a transient error (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            log.info("%s: %r (retrying)", what, exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout}s: {exc!r}")
            await asyncio.sleep(0.1)


class Probe:
    """The harness's own PostgreSQL connection, opened again after a restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: asyncpg.Connection | None = None

    async def connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self.url, timeout=3)
        return self.conn

    async def fetch(self, query: str, *args: object) -> list:
        try:
            return await (await self.connection()).fetch(query, *args, timeout=10)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


class Recovery:
    """Which jobs a fault can hit, and how long the system takes to get over it."""

    def __init__(self, probe: Probe, redis_url: str) -> None:
        self.probe = probe
        self.redis_url = redis_url

    async def exposed(self) -> dict:
        """Jobs running in PostgreSQL or leased in Redis -> their attempt counts."""
        client = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            leased = []
            for q in QUEUES:
                # In-flight members are "<job id>|<lease token>".
                leased += [m.partition("|")[0]
                           for m in await client.zrange(f"tf:{{{q}}}:inflight", 0, -1)]
        finally:
            await client.aclose()
        rows = await self.probe.fetch(
            "SELECT id, attempts FROM jobs WHERE state = 'running' OR id = ANY($1::uuid[])",
            leased)
        return {r["id"]: r["attempts"] for r in rows}

    async def last_attempt(self) -> int:
        rows = await self.probe.fetch("SELECT coalesce(max(id), 0) AS id FROM job_attempts")
        return rows[0]["id"]

    async def wait(self, back: float, exposed: dict, last_attempt: int,
                   timeout: float) -> tuple[float | None, str]:
        """Wait until the system makes progress again: a job that started after the fault
        was over (monotonic ``back``) has finished (or none is due), and every job the
        fault could hit (``exposed``) finished, ran again, or waits indexed in Redis for
        its next attempt (so a backlog does not count as a stall). Returns the monotonic
        time it happened, or None and what was stuck after ``timeout`` seconds."""
        since = datetime.now(timezone.utc) - timedelta(seconds=time.monotonic() - back)
        deadline = time.monotonic() + timeout
        pending = dict(exposed)
        progressed = False
        client = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            while True:
                try:
                    if not progressed:
                        progressed = await self._progressed(last_attempt, since)
                    if pending:
                        for job_id in await self._dealt_with(client, pending):
                            pending.pop(job_id, None)
                except TRANSIENT:
                    pass
                if progressed and not pending:
                    return time.monotonic(), ""
                if time.monotonic() > deadline:
                    return None, await self._stuck(progressed, pending)
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    async def _progressed(self, last_attempt: int, since: datetime) -> bool:
        rows = await self.probe.fetch(
            "SELECT EXISTS (SELECT 1 FROM job_attempts WHERE id > $1 AND started_at >= $2)"
            " OR NOT EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued', 'scheduled')"
            " AND run_at <= now()) AS ok", last_attempt, since)
        return rows[0]["ok"]

    async def _dealt_with(self, client: aioredis.Redis, pending: dict) -> list:
        rows = await self.probe.fetch(
            "SELECT id, queue, priority, state::text, attempts FROM jobs"
            " WHERE id = ANY($1::uuid[])", list(pending))
        done, waiting = [], []
        for r in rows:
            if r["state"] in checks.TERMINAL or r["attempts"] > pending[r["id"]]:
                done.append(r["id"])
            elif r["state"] in ("queued", "scheduled"):
                waiting.append(r)
        if waiting:
            async with client.pipeline(transaction=False) as pipe:
                for r in waiting:
                    pipe.zscore(f"tf:{{{r['queue']}}}:ready", str(r["id"]))
                    pipe.zscore(f"tf:{{{r['queue']}}}:delayed", f"{r['id']}|{r['priority']}")
                scores = await pipe.execute()
            done += [r["id"] for i, r in enumerate(waiting)
                     if scores[2 * i] is not None or scores[2 * i + 1] is not None]
        return done

    async def _stuck(self, progressed: bool, pending: dict) -> str:
        what = [] if progressed else ["no job started after the fault has finished"]
        if pending:
            try:
                conn = await self.probe.connection()
                what.append(f"{len(pending)} jobs it hit neither finished, ran again nor "
                            f"wait in Redis:\n{await checks.describe(conn, list(pending))}")
            except TRANSIENT as exc:
                what.append(f"{len(pending)} jobs hit (PostgreSQL unreachable: {exc!r})")
        return "\n".join(what)
