"""Waiting over HTTP (issue 11): submit -> outcome seen by a client with ``POST
/tasks?wait=`` one job at a time (goal p50 <= 3 ms, p99 <= 6 ms back to back; p50 <= 5 ms
10 ms apart), and idle waiters held open on one API process: memory per waiter and the
time from a job's end (``finished_at``) to its waiter's answer. ``BENCH_WAITERS`` sets
how many (default 10,000; needs as many file descriptors)."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from datetime import datetime

import aiohttp

from benchmarks.bench_api import SECRET, ApiProcess, _migrate
from benchmarks.common import WorkerProcess, percentile, report, servers
from taskflow.adapters.embedded import free_port
from taskflow.api.auth import mint_token
from taskflow.api.scopes import READ, WRITE
from taskflow.config import AuthSettings

SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "300"))
WAITERS = int(os.environ.get("BENCH_WAITERS", "10000"))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _one_at_a_time(url: str, headers: dict, gap: float) -> list[float]:
    lat = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(SAMPLES + 20):
            began = time.perf_counter()
            async with http.post(url + "/tasks?wait=10", json={"task": "noop"}) as r:
                body = await r.json()
            took = time.perf_counter() - began
            assert body["state"] == "succeeded", body
            if i >= 20:  # warm-up
                lat.append(took)
            if gap:
                await asyncio.sleep(gap)
    return lat


async def _idle_waiters(api: ApiProcess, srv, headers: dict) -> None:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=300)) as http:
        ids = []
        for start in range(0, WAITERS, 1000):
            n = min(1000, WAITERS - start)
            async with http.post(api.url + "/tasks/batch",
                                 json={"tasks": [{"task": "noop"}] * n}) as r:
                ids += (await r.json())["ids"]
        before = _rss_kib(api.process.pid)
        answered: dict[str, float] = {}

        async def wait(job_id: str) -> None:
            async with http.get(f"{api.url}/tasks/{job_id}?wait=60") as r:
                body = await r.json()
            answered[job_id] = time.time()
            assert body["state"] == "succeeded", body

        tasks = [asyncio.create_task(wait(i)) for i in ids]
        for _ in range(600):  # until the API holds them all
            async with http.get(api.url + "/metrics") as r:
                text = await r.text()
            held = next((float(line.split()[1]) for line in text.splitlines()
                         if line.startswith("taskflow_api_waiters ")), 0)
            if held >= WAITERS:
                break
            await asyncio.sleep(0.1)
        after = _rss_kib(api.process.pid)
        report(f"{WAITERS:,} idle waiters: API memory per waiter",
               (after - before) * 1024 / WAITERS, "bytes", f"(RSS {before / 1024:.0f} -> "
               f"{after / 1024:.0f} MiB, {held:,.0f} registered)")
        worker = WorkerProcess(srv)
        try:
            await asyncio.gather(*tasks)
        finally:
            worker.stop()
        lags = []
        for job_id in ids:
            async with http.get(f"{api.url}/tasks/{job_id}") as r:
                finished = datetime.fromisoformat((await r.json())["finished_at"])
            lags.append(answered[job_id] - finished.timestamp())
        report("job end -> its waiter's answer p50", percentile(lags, 50) * 1000, "ms",
               f"({WAITERS:,} jobs ending at once: a drain, not an idle system)")
        report("job end -> its waiter's answer p99", percentile(lags, 99) * 1000, "ms")


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    token = mint_token(SECRET, AuthSettings(), tenant="bench", subject="bench",
                       scopes=[READ, WRITE], ttl=3600)
    headers = {"Authorization": f"Bearer {token}"}
    with servers() as srv:
        asyncio.run(_migrate(srv))
        api = ApiProcess(srv, free_port())
        try:
            worker = WorkerProcess(srv)
            try:
                time.sleep(1.0)
                for gap, label in ((0.0, "back to back"), (0.01, "10 ms apart")):
                    lat = asyncio.run(_one_at_a_time(api.url, headers, gap))
                    goal = "goal 3 ms" if not gap else "goal 5 ms"
                    report(f"POST /tasks?wait= -> succeeded p50, {label}",
                           percentile(lat, 50) * 1000, "ms", f"({goal})")
                    report(f"POST /tasks?wait= -> succeeded p99, {label}",
                           percentile(lat, 99) * 1000, "ms",
                           "(goal 6 ms)" if not gap else "")
            finally:
                worker.stop()
            asyncio.run(_idle_waiters(api, srv, headers))
        finally:
            api.stop()


if __name__ == "__main__":
    main()
