"""Issue 8: what the new metrics cost. The drain and submit benchmarks run with the roles
as shipped and with the new metrics and log context stubbed out
(:mod:`benchmarks.without_new_metrics`), alternating, in one run; then the time to render
each role's metrics page holding 1,000 queues' worth of series (target: under 50 ms).

``BENCH_JOBS`` (default 10,000) jobs per drain, ``BENCH_SECONDS`` (default 5) per submit
run, ``BENCH_ROUNDS`` (default 4) rounds of each variant, alternating which goes first;
the best round of each counts. On a shared machine the end-to-end figures move by more
than 5 % from run to run; the in-process per-job figures say what the change costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import (
    COUNT_SUCCEEDED, FAST_WORKER, RUN_WINDOW, cpu_seconds, percentile, report, reset, servers,
    stores,
)
from taskflow.jobs import submit
from taskflow.models import NewJob

N = int(os.environ.get("BENCH_JOBS", "10000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
QUEUES = 1000
VARIANTS = {"with new metrics": "taskflow.cli", "without": "benchmarks.without_new_metrics"}


def _env(srv, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
    env.update({"TASKFLOW_DATABASE_URL": srv.database_url, "TASKFLOW_REDIS_URL": srv.redis_url,
                "TASKFLOW_DATA_DIR": str(srv.data_dir), "TASKFLOW_LOG_LEVEL": "WARNING",
                "TASKFLOW_WORKER__METRICS_PORT": "0", **extra})
    return env


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _drain_once(srv, s, module: str) -> tuple[float, float]:
    """(jobs/s from first start to last finish, worker CPU microseconds per job). The CPU
    time is counted from the first finished job (start-up is over) to the last: unlike
    the wall clock it hardly moves when other processes share the cores."""
    for i in range(0, N, 1000):
        await submit(s.store, s.dispatch,
                     [NewJob(task="noop", max_attempts=3) for _ in range(min(1000, N - i))])
    worker = subprocess.Popen([sys.executable, "-m", module, "work"],
                              env=_env(srv, **FAST_WORKER))
    first: tuple[int, float] | None = None
    try:
        while (done := await s.store.pool.fetchval(COUNT_SUCCEEDED)) < N:
            if first is None and done:
                first = (done, cpu_seconds(worker.pid))
            await asyncio.sleep(0.02)
        last = cpu_seconds(worker.pid)
    finally:
        _stop(worker)
    seconds = float(await s.store.pool.fetchval(RUN_WINDOW))
    await reset(s)
    done0, cpu0 = first or (0, 0.0)
    return N / seconds, (last - cpu0) / (N - done0) * 1e6


def _order(round_: int) -> list[tuple[str, str]]:
    """Alternate which variant goes first, so warm-up and drift do not favour one."""
    items = list(VARIANTS.items())
    return items if round_ % 2 == 0 else items[::-1]


async def drains(srv) -> tuple[dict[str, float], dict[str, float]]:
    best: dict[str, float] = {}
    cpu: dict[str, list[float]] = {label: [] for label in VARIANTS}
    async with stores(srv, migrate=True) as s:
        for round_ in range(ROUNDS):
            for label, module in _order(round_):
                rate, per_job = await _drain_once(srv, s, module)
                best[label] = max(best.get(label, 0.0), rate)
                cpu[label].append(per_job)
    for label, rate in best.items():
        report(f"drain {N:,} noop jobs, {label}", rate, "jobs/s",
               f"(rounds' worker CPU per job: {', '.join(f'{c:.0f}' for c in cpu[label])} us)")
    return best, {label: percentile(c, 50) for label, c in cpu.items()}


def _submit_once(srv, module: str, folder: Path) -> float:
    from benchmarks.bench_api import SECRET, load
    from taskflow.adapters.embedded import free_port
    from taskflow.api.auth import mint_token
    from taskflow.api.scopes import READ, WRITE
    from taskflow.config import AuthSettings

    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", module, "serve", "--port", str(port)],
        env=_env(srv, TASKFLOW_ENV="production", TASKFLOW_JWT_SECRET=SECRET,
                 TASKFLOW_DATABASE__POOL_MAX="20"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1):
                    break
            except OSError:
                if api.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("taskflow serve did not start") from None
                time.sleep(0.1)
        token = mint_token(SECRET, AuthSettings(), tenant="bench", subject="bench",
                           scopes=[READ, WRITE], ttl=3600)
        body = json.dumps({"task": "noop", "payload": {"n": 1}}).encode()
        rate, _ = load(url + "/tasks", token, 32, body, folder)
        return rate
    finally:
        _stop(api)


def submits(srv) -> dict[str, float]:
    import benchmarks.bench_api as bench_api

    bench_api.SECONDS = SECONDS
    folder = Path(tempfile.mkdtemp(prefix="obs-", dir=srv.data_dir))  # removed with it
    best: dict[str, float] = {}
    for round_ in range(ROUNDS):
        for label, module in _order(round_):
            best[label] = max(best.get(label, 0.0), _submit_once(srv, module, folder))
    for label, rate in best.items():
        report(f"POST /tasks, 32 connections, {label}", rate, "req/s")
    return best


def scrape() -> None:
    """Every metric filled for 1,000 queues (one task each, every outcome), the queue
    gauges for 1,000 queues and workers, and the API's routes: render the pages."""
    from taskflow import metrics
    from taskflow.adapters.embedded import free_port
    from taskflow.api.metrics import ApiMetrics
    from taskflow.stats import CLUSTER_STATS, STATES, Snapshot

    metrics.LABEL_CAP.configure(QUEUES)
    snap = Snapshot()
    for i in range(QUEUES):
        q, t = f"queue-{i}", f"task-{i}"
        metrics.JOBS_SUBMITTED.labels(q).inc()
        metrics.JOBS_STARTED.labels(q, t).inc()
        for outcome in ("succeeded", "retried", "failed", "cancelled"):
            metrics.JOBS_FINISHED.labels(q, t, outcome).inc()
        metrics.JOB_RETRIES.labels(q, t).inc()
        metrics.DEAD_LETTERS.labels(q).inc()
        metrics.LEASES_RESCUED.labels(q).inc()
        metrics.JOB_WAIT.labels(q).observe(0.01)
        metrics.JOB_DURATION.labels(q, t).observe(0.5)
        metrics.JOB_END_TO_END.labels(q).observe(3.0)
        snap.sizes[q] = dict.fromkeys(STATES, 5)
        snap.oldest_due[q] = time.time() - 10
        snap.workers[q] = 2
    snap.workers_alive, snap.refreshed = 50, time.time()
    CLUSTER_STATS.snapshot = snap
    api = ApiMetrics()
    for route in ("/tasks", "/tasks/batch", "/tasks/{job_id:uuid}", "/workflows", "/metrics"):
        for status in ("2xx", "4xx", "5xx"):
            api.latency.labels("GET", route, status).observe(0.002)

    def timed(render) -> tuple[float, int]:  # noqa: ANN001
        runs, size = [], 0
        for _ in range(15):
            began = time.perf_counter()
            size = len(render())
            runs.append((time.perf_counter() - began) * 1000)
        return percentile(runs, 50), size

    families = [metrics.JOB_WAIT, metrics.JOB_DURATION, metrics.JOB_END_TO_END]

    def all_changed() -> bytes:
        for family in families:  # the worst case: every series observed since last time
            for child in list(family._children.values()):
                child.changes += 1
        return metrics.page()

    ms, size = timed(all_changed)
    report(f"render a page, {QUEUES:,} queues, every series changed", ms, "ms",
           f"({size / 1e6:.1f} MB, p50)")
    ms, size = timed(api.exposition)
    report(f"render the API page, {QUEUES:,} queues", ms, "ms", f"({size / 1e6:.1f} MB, p50)")
    port = free_port()
    metrics.serve("127.0.0.1", port)

    def fetch() -> bytes:
        # From another process, as Prometheus scrapes (an in-process client would share
        # the interpreter lock with the server thread it measures).
        return subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"],
                              capture_output=True, check=True).stdout

    def fetch_nothing() -> bytes:  # curl's own start and a request, for comparison
        return subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/nothing"],
                              capture_output=True).stdout

    ms, size = timed(fetch)
    baseline, _ = timed(fetch_nothing)
    report(f"scrape the worker page over HTTP, {QUEUES:,} queues", ms, "ms",
           f"({size / 1e6:.1f} MB, p50; of which {baseline:.1f} ms is curl on an empty page)")
    ms, size = timed(metrics.page)
    report(f"render the worker page, {QUEUES:,} queues", ms, "ms", f"({size / 1e6:.1f} MB, p50)")


def per_job_cost() -> None:
    """In-process, without servers: what the worker now does per job for the new metrics
    and log context, and what the metrics it already kept cost with these families and
    with prometheus-client's (the worker's figures before this change)."""
    import datetime
    import logging

    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as ClientCounter
    from prometheus_client import Histogram as ClientHistogram

    from taskflow import logs, metrics
    from taskflow.ids import uuid7

    n, job_id, due = 100_000, uuid7(), datetime.datetime.now(datetime.timezone.utc)
    log = logging.getLogger("bench")

    def new_work() -> None:
        metrics.JOB_WAIT.labels("default").observe(max(0.0, time.time() - due.timestamp()))
        logs.bind_job(job_id, "noop", "default", 1, "tenant")
        metrics.JOB_END_TO_END.labels("default").observe(time.time() - (job_id.int >> 80) / 1e3)
        log.isEnabledFor(logging.DEBUG)

    def kept() -> None:
        metrics.JOBS_FINISHED.labels("default", "noop", "succeeded").inc()
        metrics.JOB_DURATION.labels("default", "noop").observe(0.001)

    registry = CollectorRegistry()
    finished = ClientCounter("f", "f", ["queue", "task", "outcome"], registry=registry)
    duration = ClientHistogram("d", "d", ["queue", "task"], registry=registry,
                               buckets=metrics.LATENCY_BUCKETS)
    cap = metrics.LABEL_CAP

    def kept_before() -> None:
        finished.labels(cap("queue", "default"), cap("task", "noop"), "succeeded").inc()
        duration.labels(cap("queue", "default"), cap("task", "noop")).observe(0.001)

    for label, work in (("new metrics and log context", new_work),
                        ("kept metrics, these families", kept),
                        ("kept metrics, prometheus-client (before)", kept_before)):
        began = time.perf_counter()
        for _ in range(n):
            work()
        report(f"per job: {label}", (time.perf_counter() - began) / n * 1e6, "us")


def main() -> None:
    per_job_cost()
    scrape()
    with servers() as srv:
        drain, cpu = asyncio.run(drains(srv))
        submit_rates = submits(srv)
    for name, figures in (("drain", drain), ("submit", submit_rates)):
        with_, without = figures["with new metrics"], figures["without"]
        report(f"{name}: with / without new metrics", 100 * with_ / without, "%",
               "(best rounds; target: at least 95 %)")
    report("drain: worker CPU per job, without / with", 100 * cpu["without"] /
           cpu["with new metrics"], "%", f"(medians {cpu['without']:.0f} / "
           f"{cpu['with new metrics']:.0f} us; 100 % = no cost)")


if __name__ == "__main__":
    main()
