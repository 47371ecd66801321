"""HTTP API: ``POST /tasks`` requests/s with 1 and 32 connections, ``POST /tasks/batch``
jobs/s, and submit-to-``succeeded`` latency over HTTP on an idle system.

``taskflow serve`` and ``taskflow work`` run as processes, as in production; the load
comes from another process (``wrk`` when installed, else :mod:`benchmarks.api_load`).
Every job is durable in PostgreSQL before its 201. Targets on a 2-core machine: 5,000
single submits/s, 30,000 batched jobs/s, p50 submit-to-done under 5 ms. ``POST /tasks`` at
32 connections is measured again with ``taskflow serve --workers 2`` (two API processes
on one port), alternating with the single process, to say whether a second one helps.
The fast path of ``POST /tasks`` (``api.fast_submit``, issue 11) is measured against the
Litestar route alone the same way. ``BENCH_SECONDS`` sets each throughput run's length
(default 8).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import WorkerProcess, percentile, report, servers, stores
from taskflow.adapters.embedded import free_port
from taskflow.api.auth import mint_token
from taskflow.api.scopes import READ, WRITE
from taskflow.config import AuthSettings

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
LATENCY_SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "300"))
SECRET = "bench-" + os.urandom(24).hex()
BATCH = 1000
COUNT_JOBS = "SELECT count(*) FROM jobs"  # benchmark bookkeeping only
SERVER_LATENCY = ("SELECT extract(epoch FROM finished_at - created_at) FROM jobs "
                  "WHERE state = 'succeeded'")


class ApiProcess:
    def __init__(self, srv, port: int, workers: int = 1, **env: str) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        full.update({"TASKFLOW_ENV": "production", "TASKFLOW_DATABASE_URL": srv.database_url,
                     "TASKFLOW_REDIS_URL": srv.redis_url, "TASKFLOW_DATA_DIR": str(srv.data_dir),
                     "TASKFLOW_LOG_LEVEL": "WARNING", "TASKFLOW_JWT_SECRET": SECRET,
                     "TASKFLOW_DATABASE__POOL_MAX": "20", **env})
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskflow.cli", "serve", "--port", str(port), "--workers",
             str(workers)], env=full)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("taskflow serve did not start") from None
                time.sleep(0.1)
        if workers > 1:
            time.sleep(2.0)  # one answered; let the others connect their stores too

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
local f = io.open("{body}", "rb"); wrk.body = f:read("*a"); f:close()
"""


def load(url: str, token: str, connections: int, body: bytes, folder: Path) -> tuple[float, int]:
    """(requests/s, non-2xx responses) of POSTing ``body`` for SECONDS."""
    body_file = folder / "body.json"
    body_file.write_bytes(body)
    if shutil.which("wrk"):
        script = folder / "post.lua"
        script.write_text(_WRK_SCRIPT.replace("{token}", token).replace("{body}", str(body_file)))
        out = subprocess.run(
            ["wrk", "-t", "1", "-c", str(connections), "-d", f"{SECONDS:.0f}s", "-s",
             str(script), url], capture_output=True, text=True, check=True).stdout
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: .*", out)
        if errors:
            print(f"  wrk: {errors.group(0)}")
        return rate, int(bad.group(1)) if bad else 0
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.api_load", "submit", url, token, str(connections),
         str(SECONDS), str(body_file)], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    return result["requests"] / result["seconds"], result["non_2xx"]


async def count_jobs(srv) -> int:
    async with stores(srv) as s:
        return await s.store.pool.fetchval(COUNT_JOBS)


def main() -> None:
    tool = "wrk" if shutil.which("wrk") else "aiohttp (benchmarks.api_load)"
    print(f"  load generator: {tool}, {SECONDS:.0f} s per run; one uvicorn process")
    folder = Path(tempfile.mkdtemp(prefix="taskflow-bench-api-"))
    token = mint_token(SECRET, AuthSettings(), tenant="bench", subject="bench",
                       scopes=[READ, WRITE], ttl=3600)
    with servers() as srv:
        asyncio.run(_migrate(srv))
        api = ApiProcess(srv, free_port())
        try:
            # Latency first, on an idle system with one worker waiting.
            # Back to back, and 10 ms apart: on these VMs every process that sleeps pays
            # to wake up, and a job crosses several (see bench_engine).
            worker = WorkerProcess(srv)
            try:
                time.sleep(1.0)
                for gap, label in (("0", "back to back"), ("0.01", "10 ms apart")):
                    out = subprocess.run(
                        [sys.executable, "-m", "benchmarks.api_load", "latency", api.url,
                         token, str(LATENCY_SAMPLES), gap],
                        capture_output=True, text=True, check=True).stdout
                    lat = json.loads(out)["latencies"]
                    report(f"submit-to-succeeded over HTTP p50, {label}",
                           percentile(lat, 50) * 1000, "ms",
                           "(client: POST, then GET until succeeded)")
                    report(f"submit-to-succeeded over HTTP p99, {label}",
                           percentile(lat, 99) * 1000, "ms")
                server_side = asyncio.run(_server_latencies(srv))
            finally:
                worker.stop()
            report("PostgreSQL created_at -> finished_at p50 (all)",
                   percentile(server_side, 50) * 1000, "ms")

            # Throughput with no worker: the API, PostgreSQL and Redis only.
            single = json.dumps({"task": "noop", "payload": {"n": 1}}).encode()
            rates = {}
            for connections in (1, 32):
                rates[connections] = _submits(srv, api.url, token, connections, single, folder,
                                              f"POST /tasks, {connections} connection"
                                              f"{'s' * (connections > 1)}")
            # The fast path of POST /tasks against the Litestar route alone
            # (api.fast_submit = false), then one API process against two, each pair
            # alternating so that drift in the machine's load weighs on both alike.
            fast, route = _alternating(
                srv, token, single, folder, (api.url, rates[32], "fast path"),
                ApiProcess(srv, free_port(), TASKFLOW_API__FAST_SUBMIT="false"), "route only")
            report("POST /tasks at 32, fast path / route only", fast / route, "x",
                   "(means of alternating runs)")
            one, two = _alternating(
                srv, token, single, folder, (api.url, rates[32], "--workers 1"),
                ApiProcess(srv, free_port(), workers=2), "--workers 2")
            report("POST /tasks at 32, --workers 2 / --workers 1", two / one, "x",
                   "(means of alternating runs; the load generator shares the 2 cores)")
            batch = json.dumps({"tasks": [{"task": "noop", "payload": {"n": i}}
                                          for i in range(BATCH)]}).encode()
            before = asyncio.run(count_jobs(srv))
            rate, bad = load(api.url + "/tasks/batch", token, 4, batch, folder)
            made = asyncio.run(count_jobs(srv)) - before
            report(f"POST /tasks/batch of {BATCH:,}, 4 connections", rate * BATCH, "jobs/s",
                   f"({made:,} jobs created, {bad} non-2xx)")
        finally:
            api.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _alternating(srv, token: str, body: bytes, folder: Path,
                 first: tuple[str, float, str], other: ApiProcess,
                 other_name: str) -> tuple[float, float]:
    """``POST /tasks`` at 32 connections on ``other`` and on the first API (its URL, the
    rate it already gave, its name), two rounds each in turn; the mean rate of each."""
    url, rate, name = first
    first_rates, other_rates = [rate], []
    try:
        for _ in range(2):
            other_rates.append(_submits(srv, other.url, token, 32, body, folder,
                                        f"POST /tasks, 32 connections, {other_name}"))
            first_rates.append(_submits(srv, url, token, 32, body, folder,
                                        f"POST /tasks, 32 connections, {name}"))
    finally:
        other.stop()
    return statistics.mean(first_rates), statistics.mean(other_rates)


def _submits(srv, url: str, token: str, connections: int, body: bytes, folder: Path,
             name: str) -> float:
    """Report and return the rate of single submits at ``connections``."""
    before = asyncio.run(count_jobs(srv))
    rate, bad = load(url + "/tasks", token, connections, body, folder)
    made = asyncio.run(count_jobs(srv)) - before
    report(name, rate, "req/s", f"({made:,} jobs created, {bad} non-2xx)")
    return rate


async def _migrate(srv) -> None:
    async with stores(srv, migrate=True):
        pass


async def _server_latencies(srv) -> list[float]:
    async with stores(srv) as s:
        return [float(r[0]) for r in await s.store.pool.fetch(SERVER_LATENCY)]


if __name__ == "__main__":
    main()
