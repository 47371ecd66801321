"""Shared benchmark plumbing: servers, a fresh database, worker processes, figures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg

from taskflow.adapters.embedded import EmbeddedPostgres, EmbeddedRedis
from taskflow.config import Settings, settings_from_dict
from taskflow.index import IndexGuard
from taskflow.runtime import Stores, open_stores


class Servers:
    def __init__(self, database_url: str, redis_url: str, data_dir: Path) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.data_dir = data_dir


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """The servers named by TASKFLOW_DATABASE_URL / TASKFLOW_REDIS_URL, else embedded ones;
    a fresh database either way (dropped at the end)."""
    data_dir = Path(tempfile.mkdtemp(prefix="taskflow-bench-"))
    os.chmod(data_dir, 0o755)
    started: list = []
    name = f"taskflow_bench_{uuid.uuid4().hex[:8]}"
    admin = os.environ.get("TASKFLOW_DATABASE_URL", "")
    created = False

    async def ddl(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        await conn.execute(sql)
        await conn.close()

    # A SIGTERM (`timeout`, a CI job cancelled) unwinds through the finally below, so the
    # embedded servers stop and their folder goes instead of outliving the run.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        if not admin:
            started.append(EmbeddedPostgres(data_dir / "postgres"))
            admin = started[-1].url
        redis_url = os.environ.get("TASKFLOW_REDIS_URL", "")
        if not redis_url:
            started.append(EmbeddedRedis(data_dir / "redis"))
            redis_url = started[-1].url
        asyncio.run(ddl(f'CREATE DATABASE "{name}"'))
        created = True
        base, sep, query = admin.partition("?")
        yield Servers(f"{base.rpartition('/')[0]}/{name}{sep}{query}", redis_url, data_dir)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup is not cut short
        if created:
            asyncio.run(ddl(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        for server in reversed(started):
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def bench_settings(srv: Servers) -> Settings:
    return settings_from_dict({"database_url": srv.database_url, "redis_url": srv.redis_url,
                               "data_dir": str(srv.data_dir)})


@contextlib.asynccontextmanager
async def stores(srv: Servers, *, migrate: bool = False) -> AsyncIterator[Stores]:
    async with open_stores(bench_settings(srv), srv.database_url, srv.redis_url,
                           apply_migrations=migrate) as s:
        yield s


class WorkerProcess:
    """``taskflow work`` as its own process, as it runs in production."""

    def __init__(self, srv: Servers, *args: str, **env: str) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        full_env.update({"TASKFLOW_DATABASE_URL": srv.database_url,
                         "TASKFLOW_REDIS_URL": srv.redis_url,
                         "TASKFLOW_DATA_DIR": str(srv.data_dir),
                         "TASKFLOW_LOG_LEVEL": "WARNING",
                         "TASKFLOW_WORKER__METRICS_PORT": "0", **env})
        self.process = subprocess.Popen([sys.executable, "-m", "taskflow.cli", "work", *args],
                                        env=full_env)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def report(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"  {name:<48} {value:>12,.1f} {unit}{'  ' + note if note else ''}", flush=True)


# Benchmark bookkeeping only (the engine's own SQL lives in queries.sql).
# From the attempts, not the jobs: a job has at most one succeeded attempt, and this table
# holds only what ran, so the count costs what was drained, not what waits (counting the
# jobs table scanned a 1,000,000-job backlog every 20 ms and slowed the drain it timed).
COUNT_SUCCEEDED = "SELECT count(*) FROM job_attempts WHERE outcome = 'succeeded'"
RUN_WINDOW = ("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs "
              "WHERE state = 'succeeded'")
RESET = ("TRUNCATE jobs, job_attempts, job_dependencies, workflows, jobs_unindexed, "
         "dispatch_index")


async def reset(s: Stores) -> None:
    """Empty PostgreSQL and Redis, and claim the index generation as the first process of
    a new deployment does. A RESET alone left Redis holding the old generation, and every
    worker started after it rebuilt the dispatch index from PostgreSQL while it drained: of
    the drains of one run, only the first was timed without a rebuild."""
    await s.store.pool.execute(RESET)
    await s.dispatch.client.flushdb()
    await IndexGuard(s.store, s.dispatch).check(may_rebuild=False)
# One worker process sized for throughput: many handlers, large claim batches.
FAST_WORKER = {"TASKFLOW_WORKER__CONCURRENCY": "500", "TASKFLOW_WORKER__CLAIM_BATCH": "500"}


async def drain(srv: Servers, s: Stores, total: int, processes: int = 1) -> float:
    """Start one worker (``taskflow work --processes``) on what is queued, wait until
    ``total`` jobs succeeded; returns the seconds from the first start to the last finish
    (PostgreSQL's clock)."""
    worker = WorkerProcess(srv, "--processes", str(processes), **FAST_WORKER)
    try:
        while await s.store.pool.fetchval(COUNT_SUCCEEDED) < total:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
    return float(await s.store.pool.fetchval(RUN_WINDOW))
