"""``/metrics``, ``/healthz`` and ``/readyz`` of the roles without an HTTP API (``taskflow
work``; the notifier can share it) on their metrics port, for Prometheus and for
Kubernetes probes.

The role's own event loop answers, so a loop that no longer turns fails the liveness probe
(a metrics thread would keep answering). ``/readyz`` checks the role's stores; liveness
never does, so an outage of PostgreSQL or Redis does not restart every pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from taskflow.metrics import page as metrics_page

log = logging.getLogger(__name__)

PATHS = ("/metrics", "/healthz", "/readyz")

Check = Callable[[], Awaitable[object]]
Render = Callable[[], Awaitable[bytes]]


class NotReady(Exception):
    """Raised by a readiness check that has more to say than "unreachable"."""


async def own_page() -> bytes:
    """This process's page. Rendering a large registry takes a while: not on the loop
    the jobs share."""
    return await asyncio.to_thread(metrics_page)


def _app(checks: Mapping[str, Check], timeout: float, page: Render) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=await page(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        async def one(check: Check) -> str:
            try:
                async with asyncio.timeout(timeout):
                    await check()
            except NotReady as exc:
                return str(exc)
            except Exception as exc:  # any failure means not ready; say which
                return f"unreachable ({type(exc).__name__})"
            return "ok"

        results = dict(zip(checks, await asyncio.gather(*(one(c) for c in checks.values()))))
        ok = all(r == "ok" for r in results.values())
        return web.json_response({"status": "ok" if ok else "unavailable", **results},
                                 status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@contextlib.asynccontextmanager
async def ops_server(host: str, port: int, checks: Mapping[str, Check],
                     timeout: float = 2.0, page: Render = own_page) -> AsyncIterator[None]:
    """Serve the three paths on ``host:port`` while the block runs (``port`` 0: not at all),
    ``/metrics`` from ``page`` (a supervisor's is its processes' sum).
    A port that cannot be bound is logged, not fatal: the role still does its work."""
    if not port:
        yield
        return
    runner = web.AppRunner(_app(checks, timeout, page), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            log.error("cannot serve metrics and health on %s:%d: %s", host, port, exc)
        yield
    finally:
        await runner.cleanup()
