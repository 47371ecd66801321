"""Core engine: enqueue rate, drain rate of one worker process, submit-to-finish latency.

Every state change is durable in PostgreSQL (synchronous commit on). Figures on a shared
2-core machine are noisy; compare ratios within one run. ``BENCH_JOBS`` sets the job count
(default 10,000).
"""

from __future__ import annotations

import asyncio
import os
import time

from benchmarks.common import WorkerProcess, percentile, report, servers, stores
from taskflow.jobs import submit
from taskflow.models import NewJob

N = int(os.environ.get("BENCH_JOBS", "10000"))
LATENCY_SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "300"))
WORKER_ENV = {"TASKFLOW_WORKER__CONCURRENCY": "500", "TASKFLOW_WORKER__CLAIM_BATCH": "500"}

# Benchmark bookkeeping only (the engine's own SQL lives in queries.sql).
COUNT_DONE = "SELECT count(*) FROM jobs WHERE state = 'succeeded'"
DRAIN_WINDOW = ("SELECT extract(epoch FROM max(finished_at) - min(started_at)) "
                "FROM jobs WHERE state = 'succeeded'")
RESET = "TRUNCATE jobs, job_attempts"


def noop() -> NewJob:
    return NewJob(task="noop", max_attempts=3)


async def enqueue_rates(s) -> None:
    began = time.perf_counter()
    for i in range(0, N, 1000):
        await submit(s.store, s.dispatch, [noop() for _ in range(min(1000, N - i))])
    report("enqueue, batches of 1,000", N / (time.perf_counter() - began), "jobs/s")

    await s.store.pool.execute(RESET)
    await s.dispatch.client.flushdb()
    singles = min(N, 5000)
    pending = iter(range(singles))

    async def producer() -> None:
        for _ in pending:
            await submit(s.store, s.dispatch, [noop()])

    began = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(32)))
    report("enqueue, one job per call, 32 concurrent", singles / (time.perf_counter() - began),
           "jobs/s")
    await s.store.pool.execute(RESET)
    await s.dispatch.client.flushdb()


async def drain_rate(srv, s) -> None:
    for i in range(0, N, 1000):
        await submit(s.store, s.dispatch, [noop() for _ in range(min(1000, N - i))])
    worker = WorkerProcess(srv, **WORKER_ENV)
    try:
        while await s.store.pool.fetchval(COUNT_DONE) < N:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
    seconds = await s.store.pool.fetchval(DRAIN_WINDOW)
    report(f"drain {N:,} noop jobs, one worker process", N / float(seconds), "jobs/s",
           f"({float(seconds):.2f}s, first start to last finish)")
    await s.store.pool.execute(RESET)


async def latency(srv, s) -> None:
    worker = WorkerProcess(srv, **WORKER_ENV)
    try:
        result = await submit(s.store, s.dispatch, [noop()])  # warm up, and wait for ready
        job_id = result.created[0].id
        while (await s.store.get_job(job_id)).state.value != "succeeded":
            await asyncio.sleep(0.05)
        observed, recorded = [], []
        for _ in range(LATENCY_SAMPLES):
            began = time.perf_counter()
            job_id = (await submit(s.store, s.dispatch, [noop()])).created[0].id
            while True:
                job = await s.store.get_job(job_id)
                if job.state.value == "succeeded":
                    break
                # Poll gently: a busy loop would take a core from the worker and servers.
                await asyncio.sleep(0.0005)
            observed.append((time.perf_counter() - began) * 1000)
            recorded.append((job.finished_at - job.created_at).total_seconds() * 1000)
            await asyncio.sleep(0.01)  # idle worker between samples
    finally:
        worker.stop()
    report("latency submit->succeeded p50 (client)", percentile(observed, 50), "ms")
    report("latency submit->succeeded p99 (client)", percentile(observed, 99), "ms")
    report("latency created_at->finished_at p50 (PostgreSQL)", percentile(recorded, 50), "ms")
    report("latency created_at->finished_at p99 (PostgreSQL)", percentile(recorded, 99), "ms")


async def main(srv) -> None:
    async with stores(srv, migrate=True) as s:
        await enqueue_rates(s)
        await drain_rate(srv, s)
        await latency(srv, s)


if __name__ == "__main__":
    with servers() as srv:
        asyncio.run(main(srv))
