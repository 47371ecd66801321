"""Cost must not grow with the backlog (issue 11): the drain rate of one worker with a
10,000-job backlog against the same worker's first 10,000 jobs of a large backlog (each
measured twice), Redis memory per waiting job, and the time to rebuild a truly lost index
while the drain goes on; and, over HTTP against one ``taskflow serve``, the latency of
``GET /tasks/{id}`` (a random waiting job) and of ``POST /tasks`` with each backlog.
``BENCH_BACKLOG`` sets the large backlog (default 1,000,000; batch-submitted through the
library, as the API does); ``BENCH_SETTLE`` the seconds between the fill and the drain
(default 15: right after a bulk insert, autovacuum of the new rows competes with it).
Both backlogs are checkpointed before their drain (see ``aged``).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import aiohttp

from benchmarks.bench_api import SECRET, ApiProcess
from benchmarks.common import (
    COUNT_SUCCEEDED, FAST_WORKER, WorkerProcess, percentile, report, reset, servers, stores,
)
from taskflow.adapters.embedded import free_port
from taskflow.api.auth import mint_token
from taskflow.api.scopes import READ, WRITE
from taskflow.config import AuthSettings
from taskflow.jobs import submit
from taskflow.models import NewJob

BACKLOG = int(os.environ.get("BENCH_BACKLOG", "1000000"))
FIRST = 10_000
SETTLE = float(os.environ.get("BENCH_SETTLE", "15"))
SAMPLES = 500  # requests per latency figure, one at a time


async def fill(s, n: int) -> None:
    for i in range(0, n, 5000):
        await submit(s.store, s.dispatch,
                     [NewJob(task="noop", max_attempts=3) for _ in range(min(5000, n - i))])


async def first_jobs_rate(srv, s) -> float:
    """Jobs/s over the first FIRST jobs a new worker process drains from what waits."""
    base = await s.store.pool.fetchval(COUNT_SUCCEEDED)
    worker = WorkerProcess(srv, **FAST_WORKER)
    try:
        while await s.store.pool.fetchval(COUNT_SUCCEEDED) < base + 1:
            await asyncio.sleep(0.01)
        began = time.perf_counter()
        while await s.store.pool.fetchval(COUNT_SUCCEEDED) < base + FIRST:
            await asyncio.sleep(0.02)
        return (FIRST - 1) / (time.perf_counter() - began)
    finally:
        worker.stop()


async def small_backlog_rate(srv, s) -> float:
    await reset(s)
    await fill(s, FIRST)
    await aged(s)
    return await first_jobs_rate(srv, s)


async def aged(s) -> None:
    """A checkpoint after each fill: a large fill spans checkpoints by itself, and a
    page's first change after one writes the whole page to the WAL, so without it only
    the large backlog's drain paid for that (0.77 against 0.9 of the small one's rate)."""
    await asyncio.sleep(0.5)  # the confirmations of the last enqueues
    await s.store.pool.execute("CHECKPOINT")


async def api_latencies(api: ApiProcess, s) -> dict[str, list[float]]:
    """Seconds per ``GET /tasks/{id}`` of a random waiting job and per ``POST /tasks``,
    one request at a time (no worker runs: what is submitted stays in the backlog)."""
    ids = [r["id"] for r in await s.store.pool.fetch(
        "SELECT id FROM jobs WHERE state = 'queued' ORDER BY random() LIMIT $1", SAMPLES)]
    token = mint_token(SECRET, AuthSettings(), tenant="default", subject="bench",
                       scopes=[READ, WRITE], ttl=3600)
    headers = {"Authorization": f"Bearer {token}"}
    times: dict[str, list[float]] = {"GET /tasks/{id}": [], "POST /tasks": []}
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(2 * SAMPLES + 20):
            get = i % 2 == 0  # interleaved, so both see the same moments
            began = time.perf_counter()
            if get:
                request = http.get(f"{api.url}/tasks/{random.choice(ids)}")
            else:
                request = http.post(f"{api.url}/tasks", json={"task": "noop"})
            async with request as resp:
                await resp.read()
                assert resp.status in (200, 201), resp.status
            if i >= 20:  # the first ones warm connections and caches up
                times["GET /tasks/{id}" if get else "POST /tasks"].append(
                    time.perf_counter() - began)
    return times


def report_latencies(small: dict[str, list[float]], large: dict[str, list[float]]) -> None:
    for name in small:
        for p in (50, 99):
            a, b = percentile(small[name], p) * 1000, percentile(large[name], p) * 1000
            report(f"{name} p{p}, backlog {FIRST:,} / {BACKLOG:,}", b, "ms",
                   f"(vs {a:.2f} ms: ratio {b / a:.2f})")


async def main(srv, api: ApiProcess) -> None:
    async with stores(srv, migrate=True) as s:
        await reset(s)
        await fill(s, FIRST)
        await aged(s)
        small_latency = await api_latencies(api, s)
        smalls = [await first_jobs_rate(srv, s)]
        report(f"drain, backlog of {FIRST:,}", smalls[0], "jobs/s")

        await reset(s)
        before = (await s.dispatch.client.info("memory"))["used_memory"]
        began = time.perf_counter()
        await fill(s, BACKLOG)
        report(f"submit a backlog of {BACKLOG:,} (batches of 5,000)",
               BACKLOG / (time.perf_counter() - began), "jobs/s")
        after = (await s.dispatch.client.info("memory"))["used_memory"]
        report("Redis memory per waiting job", (after - before) / BACKLOG, "bytes")
        # Let the system settle (confirmations, autovacuum of the new rows) before the
        # drain; BENCH_SETTLE=0 starts the worker at once, as an impatient user would.
        await asyncio.sleep(SETTLE)
        await aged(s)
        vacuuming = await s.store.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
        if vacuuming:
            print(f"  ({vacuuming} autovacuum workers still busy after the "
                  f"{SETTLE:g} s settle)", flush=True)
        large_latency = await api_latencies(api, s)
        # Twice each (the second large window is the next FIRST jobs, from what is left;
        # the second small one comes at the end): one window of about a second is noisy.
        larges = [await first_jobs_rate(srv, s), await first_jobs_rate(srv, s)]
        report(f"drain, first {FIRST:,} of a backlog of {BACKLOG:,}", larges[0], "jobs/s",
               f"then the next {FIRST:,}: {larges[1]:,.0f} jobs/s")
        report_latencies(small_latency, large_latency)

        # A truly lost index: Redis emptied under the backlog, a worker started.
        waiting = await s.store.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'scheduled')")
        done_before = await s.store.pool.fetchval(COUNT_SUCCEEDED)
        await s.dispatch.client.flushdb()
        worker = WorkerProcess(srv, **FAST_WORKER)
        began = time.perf_counter()
        try:
            keys = s.dispatch.keys("default")
            while True:
                done = await s.store.pool.fetchval(COUNT_SUCCEEDED) - done_before
                indexed = await s.dispatch.client.zcard(keys.ready)
                if indexed + done >= waiting - 1000:
                    break
                await asyncio.sleep(0.1)
            seconds = time.perf_counter() - began
        finally:
            worker.stop()
        report(f"rebuild a lost index of {waiting:,} jobs", seconds, "s",
               f"({done:,} jobs drained meanwhile, {done / seconds:,.0f} jobs/s)")

        smalls.append(await small_backlog_rate(srv, s))
        report(f"drain, backlog of {FIRST:,}, again", smalls[1], "jobs/s")
        small, large = sum(smalls) / 2, sum(larges) / 2
        report(f"drain, backlog of {BACKLOG:,} / of {FIRST:,}", large / small, "x",
               f"(means of two windows each: {large:,.0f} / {small:,.0f} jobs/s; the "
               f"first {FIRST:,} alone: {larges[0] / small:.2f}x; goal >= 0.80)")


async def migrated(srv) -> None:
    async with stores(srv, migrate=True):
        pass


if __name__ == "__main__":
    with servers() as srv:
        asyncio.run(migrated(srv))
        api = ApiProcess(srv, free_port())
        try:
            asyncio.run(main(srv, api))
        finally:
            api.stop()
