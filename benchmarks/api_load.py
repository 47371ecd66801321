"""HTTP load generator for ``bench_api`` (aiohttp), run as its own process so that it
does not share an event loop or a core's time slice accounting with the server.

    python -m benchmarks.api_load submit URL TOKEN CONCURRENCY SECONDS BODY_FILE
    python -m benchmarks.api_load latency URL TOKEN SAMPLES

Prints one JSON object: requests, seconds and non-2xx count; or latencies in seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


async def submit(url: str, token: str, concurrency: int, seconds: float, body: bytes) -> dict:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    done = bad = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            nonlocal done, bad
            while time.perf_counter() < deadline:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    done += 1
                    bad += resp.status >= 300

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"requests": done, "seconds": elapsed, "non_2xx": bad}


async def latency(base: str, token: str, samples: int, gap: float) -> dict:
    """Submit one job, then read it until it has succeeded; repeat after ``gap`` seconds
    of idleness."""
    headers = {"Authorization": f"Bearer {token}"}
    out: list[float] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(samples + 10):
            began = time.perf_counter()
            async with http.post(f"{base}/tasks", json={"task": "noop"}, headers=headers) as r:
                job = await r.json()
            while True:
                async with http.get(f"{base}/tasks/{job['id']}", headers=headers) as r:
                    state = (await r.json())["state"]
                if state == "succeeded":
                    break
                if state in ("failed", "cancelled"):
                    raise RuntimeError(f"job {job['id']} ended {state}")
                # Half a millisecond between reads: back-to-back reads would compete with
                # the worker for the two cores and slow down what they measure.
                await asyncio.sleep(0.0005)
            out.append(time.perf_counter() - began)
            if gap:
                await asyncio.sleep(gap)  # idle between jobs
    return {"latencies": out[10:]}  # the first few warm connections and caches


def main() -> None:
    mode, url, token, *rest = sys.argv[1:]
    if mode == "submit":
        concurrency, seconds, body_file = int(rest[0]), float(rest[1]), rest[2]
        with open(body_file, "rb") as f:
            result = asyncio.run(submit(url, token, concurrency, seconds, f.read()))
    else:
        result = asyncio.run(latency(url, token, int(rest[0]), float(rest[1])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
