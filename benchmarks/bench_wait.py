"""Waiting over HTTP (issue 11).

1. Submit -> outcome seen by a client with ``POST /tasks?wait=``, one job at a time on an
   idle worker (goals: p50 <= 3 ms and p99 <= 6 ms back to back, p50 <= 5 ms 10 ms apart).
2. ``BENCH_WAITERS`` (10,000) idle waiters held open on one API process: its memory per
   waiter, the time from a job's end (``finished_at``) to its waiter's answer while they
   are held, and how fast their registrations go when their clients hang up.
3. The notification channel: Redis pub/sub (chosen) against PostgreSQL LISTEN/NOTIFY --
   delivery latency, and what each adds to the writer (the outcome flush).

``taskflow serve`` and ``taskflow work`` run as processes; the client is this process.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
import uuid
from datetime import datetime

import aiohttp
import asyncpg

from benchmarks.bench_api import SECRET, ApiProcess, _migrate
from benchmarks.common import (
    WorkerProcess, cpu_seconds, percentile, report, servers, stores,
)
from taskflow.adapters.embedded import free_port
from taskflow.api.auth import mint_token
from taskflow.api.scopes import READ, WRITE
from taskflow.config import AuthSettings

SAMPLES = int(os.environ.get("BENCH_LATENCY_SAMPLES", "300"))
WAITERS = int(os.environ.get("BENCH_WAITERS", "10000"))
MESSAGE = " ".join(str(uuid.uuid4()) for _ in range(50))  # a flush of 50 outcomes


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1000


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def _submit_and_wait(url: str, headers: dict, gap: float, samples: int,
                           http: aiohttp.ClientSession, *, poll: bool = False,
                           ) -> dict[str, list[float]]:
    """One job at a time, ``samples`` times: ``rtt`` (submit -> the client has the
    outcome), ``lag`` (finished_at -> the client has it), ``engine`` (created_at ->
    finished_at, PostgreSQL's clock). With ``poll``, every other sample submits and then
    GETs until succeeded (0.5 ms apart, as bench_api): the baseline, in the same run."""
    out: dict[str, list[float]] = {k: [] for k in ("rtt", "lag", "engine", "poll_rtt")}
    for i in range(2 * samples + 20 if poll else samples + 20):
        polling = poll and i % 2 == 1
        began = time.perf_counter()
        if polling:
            async with http.post(url + "/tasks", json={"task": "noop"},
                                 headers=headers) as r:
                body = await r.json()
            while body["state"] != "succeeded":
                await asyncio.sleep(0.0005)
                async with http.get(f"{url}/tasks/{body['id']}", headers=headers) as r:
                    body = await r.json()
        else:
            async with http.post(url + "/tasks?wait=10", json={"task": "noop"},
                                 headers=headers) as r:
                body = await r.json()
        answered = time.time()
        took = time.perf_counter() - began
        assert body["state"] == "succeeded", body
        if i >= 20:  # warm-up
            if polling:
                out["poll_rtt"].append(took)
            else:
                out["rtt"].append(took)
                out["lag"].append(answered - _ts(body["finished_at"]))
                out["engine"].append(_ts(body["finished_at"]) - _ts(body["created_at"]))
        if gap:
            await asyncio.sleep(gap)
    return out


async def _waiters_held(api: ApiProcess, headers: dict) -> int:
    async with aiohttp.ClientSession(headers=headers) as http, \
            http.get(api.url + "/metrics") as r:
        text = await r.text()
    return int(next((float(line.split()[1]) for line in text.splitlines()
                     if line.startswith("taskflow_api_waiters ")), 0))


async def _latency(api: ApiProcess, headers: dict) -> None:
    async with aiohttp.ClientSession() as http:
        for gap, label in ((0.0, "back to back"), (0.01, "10 ms apart")):
            got = await _submit_and_wait(api.url, headers, gap, SAMPLES, http, poll=True)
            rtt, poll = got["rtt"], got["poll_rtt"]
            report(f"POST /tasks?wait= -> succeeded p50, {label}", _ms(rtt, 50), "ms",
                   f"({'goal 3 ms' if not gap else 'goal 5 ms'}; POST + GET polling in "
                   f"the same run: {_ms(poll, 50):.1f} ms, "
                   f"{percentile(rtt, 50) / percentile(poll, 50):.2f}x)")
            report(f"POST /tasks?wait= -> succeeded p99, {label}", _ms(rtt, 99), "ms",
                   f"({'goal 6 ms; ' if not gap else ''}polling: {_ms(poll, 99):.1f} ms)")
            report(f"  of which PostgreSQL created -> finished p50, {label}",
                   _ms(got["engine"], 50), "ms", "(the engine)")
            report(f"  of which finished -> client has it p50, {label}",
                   _ms(got["lag"], 50), "ms",
                   f"(notification, read, answer; p99 {_ms(got['lag'], 99):.1f} ms)")


async def _fast_vs_route(api: ApiProcess, route: ApiProcess, headers: dict) -> None:
    """``POST /tasks?wait=`` back to back on the fast path (``api``) and on the Litestar
    route alone (``api.fast_submit = false``), three rounds each in turn: latency, and
    the API process's CPU per request."""
    rtt: dict[str, list[float]] = {"fast": [], "route": []}
    cpu = {"fast": 0.0, "route": 0.0}
    n = SAMPLES // 3
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            for name, server in (("route", route), ("fast", api)):
                before = cpu_seconds(server.process.pid)
                rtt[name] += (await _submit_and_wait(server.url, headers, 0.0, n, http))["rtt"]
                cpu[name] += cpu_seconds(server.process.pid) - before
    per = {name: cpu[name] / (3 * (n + 20)) * 1e6 for name in cpu}  # with the warm-up
    report("POST /tasks?wait= p50, back to back, fast path", _ms(rtt["fast"], 50), "ms",
           f"(route only: {_ms(rtt['route'], 50):.1f} ms, alternating in the same run; "
           f"{percentile(rtt['fast'], 50) / percentile(rtt['route'], 50):.2f}x)")
    report("POST /tasks?wait= API CPU per request, fast path", per["fast"], "us",
           f"(route only: {per['route']:.0f} us; {per['fast'] / per['route']:.2f}x)")


async def _idle_waiters(api: ApiProcess, srv, headers: dict) -> None:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:
        ids = []
        for start in range(0, WAITERS, 1000):  # due in an hour: they stay waiting
            n = min(1000, WAITERS - start)
            async with http.post(api.url + "/tasks/batch",
                                 json={"tasks": [{"task": "noop", "delay": 3600}] * n}) as r:
                ids += (await r.json())["ids"]
        await asyncio.sleep(1.0)
        before = _rss_kib(api.process.pid)
        began = time.perf_counter()

        async def wait(job_id: str) -> None:
            async with http.get(f"{api.url}/tasks/{job_id}?wait=60") as r:
                await r.read()

        idle = [asyncio.create_task(wait(i)) for i in ids]
        held = 0
        while held < WAITERS and time.perf_counter() - began < 120:
            await asyncio.sleep(0.2)
            held = await _waiters_held(api, headers)
        opened = time.perf_counter() - began
        await asyncio.sleep(1.0)
        after = _rss_kib(api.process.pid)
        report(f"{WAITERS:,} idle waiters: API memory per waiter",
               (after - before) * 1024 / WAITERS, "bytes",
               f"(RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB; {held:,} registered "
               f"in {opened:.1f} s, each its own connection)")
        worker = WorkerProcess(srv)
        try:
            await asyncio.sleep(1.0)
            # A session of its own: the held ones' pool has connections uvicorn has closed
            # (keep-alive timeout) while the waiters were being opened.
            async with aiohttp.ClientSession() as fresh:
                got = await _submit_and_wait(api.url, headers, 0.01, 200, fresh)
            rtt, lag = got["rtt"], got["lag"]
        finally:
            worker.stop()
        report(f"job end -> its waiter's answer p50 ({WAITERS:,} held)", _ms(lag, 50), "ms",
               "(finished_at -> client has the 201 body)")
        report(f"job end -> its waiter's answer p99 ({WAITERS:,} held)", _ms(lag, 99), "ms")
        report(f"POST /tasks?wait= p50, 10 ms apart ({WAITERS:,} held)", _ms(rtt, 50), "ms")
        began = time.perf_counter()
        for task in idle:
            task.cancel()  # the clients hang up
        await asyncio.gather(*idle, return_exceptions=True)
        await conn.close()
        while await _waiters_held(api, headers) and time.perf_counter() - began < 60:
            await asyncio.sleep(0.05)
        report(f"{WAITERS:,} clients hang up -> registry empty", time.perf_counter() - began,
               "s", f"({await _waiters_held(api, headers)} left)")


async def _alternate(measure, rounds: int = 10) -> tuple[float, float]:
    """Median per-operation time of ``measure(False)`` and ``measure(True)``, taken in
    alternating rounds (the machine's load drifts)."""
    without, with_ = [], []
    for _ in range(rounds):
        without.append(await measure(False))
        with_.append(await measure(True))
    return percentile(without, 50), percentile(with_, 50)


async def _channels(srv) -> None:
    """Redis PUBLISH in the settle pipeline against pg_notify in the flush's transaction."""
    n = 200  # per round; rounds alternate without and with, so drift hits both alike
    async with stores(srv) as s:
        client = s.dispatch.client
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe("bench:changed")
        await pubsub.get_message(timeout=1.0)
        redis_lat = []
        for _ in range(1000):
            began = time.perf_counter()
            await client.publish("bench:changed", MESSAGE)
            while (await pubsub.get_message(timeout=None)) is None:
                pass
            redis_lat.append(time.perf_counter() - began)
        await pubsub.aclose()

        async def pipeline(publish: bool) -> float:
            began = time.perf_counter()
            for _ in range(n):
                async with client.pipeline(transaction=False) as pipe:
                    pipe.zrem("bench:inflight", "x")
                    if publish:
                        pipe.publish("bench:changed", MESSAGE)
                    await pipe.execute()
            return (time.perf_counter() - began) / n

        redis_base, redis_with = await _alternate(pipeline)

        pool = s.store.pool
        await pool.execute("CREATE TABLE IF NOT EXISTS bench_notify (id int PRIMARY KEY, "
                           "n int); INSERT INTO bench_notify VALUES (1, 0) "
                           "ON CONFLICT DO NOTHING")
        listener = await asyncpg.connect(srv.database_url)
        arrived: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener("bench_changed",
                                    lambda *args: arrived.put_nowait(args[3]))
        pg_lat = []
        for _ in range(1000):
            began = time.perf_counter()
            await pool.execute("SELECT pg_notify('bench_changed', $1)", MESSAGE)
            await arrived.get()
            pg_lat.append(time.perf_counter() - began)

        async def write(notify: bool) -> float:
            began = time.perf_counter()
            async with pool.acquire() as conn:
                for _ in range(n):
                    if notify:  # NOTIFY needs the transaction the update commits in
                        async with conn.transaction():
                            await conn.execute("UPDATE bench_notify SET n = n + 1 "
                                               "WHERE id = 1")
                            await conn.execute("SELECT pg_notify('bench_changed', $1)",
                                               MESSAGE)
                    else:
                        await conn.execute("UPDATE bench_notify SET n = n + 1 WHERE id = 1")
            return (time.perf_counter() - began) / n

        pg_base, pg_with = await _alternate(write)
        await listener.close()
        await pool.execute("DROP TABLE bench_notify")
    report("Redis PUBLISH -> subscriber p50", _ms(redis_lat, 50), "ms")
    report("Redis PUBLISH -> subscriber p99", _ms(redis_lat, 99), "ms")
    report("PostgreSQL NOTIFY -> LISTEN p50", _ms(pg_lat, 50), "ms")
    report("PostgreSQL NOTIFY -> LISTEN p99", _ms(pg_lat, 99), "ms")
    report("settle pipeline: + PUBLISH adds", (redis_with - redis_base) * 1e6, "us",
           f"({redis_base * 1e6:.0f} -> {redis_with * 1e6:.0f} us per flush)")
    report("flush statement: + pg_notify adds", (pg_with - pg_base) * 1e6, "us",
           f"({pg_base * 1e6:.0f} -> {pg_with * 1e6:.0f} us per flush: a transaction "
           "and a statement more)")


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    token = mint_token(SECRET, AuthSettings(), tenant="bench", subject="bench",
                       scopes=[READ, WRITE], ttl=3600)
    headers = {"Authorization": f"Bearer {token}"}
    with servers() as srv:
        asyncio.run(_migrate(srv))
        asyncio.run(_channels(srv))
        api = ApiProcess(srv, free_port())
        try:
            worker = WorkerProcess(srv)
            try:
                time.sleep(1.0)
                asyncio.run(_latency(api, headers))
                route = ApiProcess(srv, free_port(), TASKFLOW_API__FAST_SUBMIT="false")
                try:
                    asyncio.run(_fast_vs_route(api, route, headers))
                finally:
                    route.stop()
            finally:
                worker.stop()
            asyncio.run(_idle_waiters(api, srv, headers))
        finally:
            api.stop()


if __name__ == "__main__":
    main()
