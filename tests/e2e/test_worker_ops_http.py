"""``taskflow work`` serves /metrics, /healthz and /readyz on its metrics port (what the
Helm chart's probes call): readiness follows its stores, liveness does not."""

from __future__ import annotations

import signal

import aiohttp

from taskflow.adapters.embedded import EmbeddedRedis, free_port
from tests.e2e.processes import Role
from tests.helpers import wait_until


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_health_follows_the_stores_and_metrics_are_served(migrated, servers, tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis")  # one this test may stop
    port = free_port()
    worker = Role(servers, ["work"], tmp_path / "worker.log",
                  TASKFLOW_REDIS_URL=redis.url, TASKFLOW_WORKER__METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        async def answering():
            try:
                return await _get(f"{base}/readyz")
            except aiohttp.ClientError:
                return None

        status, kind, body = await wait_until(answering, timeout=20)
        assert status == 200 and kind.startswith("application/json"), body
        assert '"postgres": "ok"' in body and '"redis": "ok"' in body
        status, _, _ = await _get(f"{base}/healthz")
        assert status == 200
        status, kind, body = await _get(f"{base}/metrics")
        assert status == 200 and kind.startswith("text/plain; version=")
        assert "# TYPE taskflow_worker_running_jobs gauge" in body
        assert (await _get(f"{base}/nothing-here"))[0] == 404

        redis.stop()

        async def not_ready():
            status, _, body = await _get(f"{base}/readyz")
            return (status, body) if status == 503 else None

        status, body = await wait_until(not_ready, timeout=15)
        assert '"redis": "unreachable' in body and '"postgres": "ok"' in body
        assert (await _get(f"{base}/healthz"))[0] == 200  # alive all the same
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(timeout=60)
        worker.stop()
        redis.stop()
