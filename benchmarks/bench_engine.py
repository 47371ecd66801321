"""Core engine: enqueue rate, drain rate of one worker with 1 and 2 processes
(``taskflow work --processes``), submit-to-finish latency.

Every state change is durable in PostgreSQL (synchronous commit on). Figures on a shared
2-core machine are noisy; compare ratios within one run. ``BENCH_JOBS`` sets the job count
(default 10,000). Goal (issue 11): a machine-wide drain of 12,000 no-op jobs/s.
"""

from __future__ import annotations

import asyncio
import os
import time

from benchmarks.common import (
    FAST_WORKER, WorkerProcess, drain, percentile, report, reset, servers, stores,
)
from taskflow.jobs import submit
from taskflow.models import NewJob

N = int(os.environ.get("BENCH_JOBS", "10000"))
LATENCY_SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "300"))


def noop() -> NewJob:
    return NewJob(task="noop", max_attempts=3)


async def enqueue_rates(s) -> None:
    began = time.perf_counter()
    for i in range(0, N, 1000):
        await submit(s.store, s.dispatch, [noop() for _ in range(min(1000, N - i))])
    report("enqueue, batches of 1,000", N / (time.perf_counter() - began), "jobs/s")

    await reset(s)
    singles = min(N, 5000)
    pending = iter(range(singles))

    async def producer() -> None:
        for _ in pending:
            await submit(s.store, s.dispatch, [noop()])

    began = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(32)))
    report("enqueue, one job per call, 32 concurrent", singles / (time.perf_counter() - began),
           "jobs/s")
    await reset(s)


DRAIN_GOAL = 12_000  # no-op jobs/s machine-wide, with --processes as found best


async def drain_rate(srv, s) -> None:
    rates = {}
    for processes in (1, 2):
        for i in range(0, N, 1000):
            await submit(s.store, s.dispatch, [noop() for _ in range(min(1000, N - i))])
        seconds = await drain(srv, s, N, processes)
        rates[processes] = N / seconds
        report(f"drain {N:,} noop jobs, --processes {processes}", rates[processes], "jobs/s",
               f"({seconds:.2f}s, first start to last finish; goal >= {DRAIN_GOAL:,})")
        await reset(s)
    report("drain scaling, --processes 2 / --processes 1", rates[2] / rates[1], "x",
           f"(best {max(rates.values()):,.0f} jobs/s against the goal of {DRAIN_GOAL:,})")


async def _latency_samples(s, gap: float) -> tuple[list[float], list[float]]:
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
        if gap:
            await asyncio.sleep(gap)
    return observed, recorded


async def latency(srv, s) -> None:
    """One job at a time on an idle worker. Back to back, and with 10 ms of idleness
    between jobs: on these VMs a process that sleeps pays ~0.3-1 ms to wake up (a plain
    INSERT goes from 0.4 to 1.4 ms), and a job crosses client, PostgreSQL, Redis and
    worker several times, so the gap shows that cost rather than taskflow's."""
    worker = WorkerProcess(srv, **FAST_WORKER)
    try:
        result = await submit(s.store, s.dispatch, [noop()])  # warm up, and wait for ready
        job_id = result.created[0].id
        while (await s.store.get_job(job_id)).state.value != "succeeded":
            await asyncio.sleep(0.05)
        for gap, label in ((0.0, "back to back"), (0.01, "10 ms apart")):
            observed, recorded = await _latency_samples(s, gap)
            report(f"latency submit->succeeded p50, {label}", percentile(observed, 50), "ms",
                   f"(PostgreSQL created->finished {percentile(recorded, 50):.1f} ms)")
            report(f"latency submit->succeeded p99, {label}", percentile(observed, 99), "ms",
                   f"(PostgreSQL created->finished {percentile(recorded, 99):.1f} ms)")
    finally:
        worker.stop()


async def main(srv) -> None:
    async with stores(srv, migrate=True) as s:
        await enqueue_rates(s)
        await drain_rate(srv, s)
        await latency(srv, s)


if __name__ == "__main__":
    with servers() as srv:
        asyncio.run(main(srv))
