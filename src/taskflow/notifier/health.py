"""The notifier's own HTTP port: ``/metrics`` (Prometheus), ``/healthz`` (the process
runs) and ``/readyz`` (PostgreSQL answers and the LISTEN connection is up)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from taskflow.adapters.outbox import OutboxStore
from taskflow.notifier.notifier import Notifier


def health_app(notifier: Notifier, outbox: OutboxStore) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(2.0):
                await outbox.pool.fetchval("SELECT 1")
            postgres = "ok"
        except Exception as exc:  # any failure means not ready; say which
            postgres = f"unavailable: {type(exc).__name__}"
        listening = "ok" if notifier.listening else "not listening"
        ready = postgres == "ok" and notifier.listening and notifier.registered
        return web.json_response(
            {"status": "ok" if ready else "unavailable", "postgres": postgres,
             "listen": listening}, status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def serve_health(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serves ``app`` on host:port (0: a free port); yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
