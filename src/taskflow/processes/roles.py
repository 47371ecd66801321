"""``taskflow work --processes N`` and ``taskflow serve --workers N``: the supervisor's
side and the child's side of each role.

The supervisor does, once for all its children, what is the same for all of them: it
applies migrations, refreshes the queue gauges and (for workers) runs the reaper and
reconciler, and it answers for the role's metrics (the sum of every process's page;
:mod:`taskflow.processes.pages`). For workers it owns ``worker.metrics_port``:
``/metrics``, ``/healthz``, and ``/readyz``, which is not ready while fewer than N
children are up. For the API the children share the listening socket the supervisor
bound, and the one that gets a scrape serves the merged page it asks the supervisor for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable

from taskflow import metrics
from taskflow.config import Settings
from taskflow.ops_http import NotReady, ops_server, own_page
from taskflow.processes.pages import (
    PageCollector, fetch_page, merged_socket_path, serve_page, socket_path,
)
from taskflow.processes.supervisor import Supervisor, watch_parent
from taskflow.runtime import (
    cluster_stats, maintenance_duty, open_stores, run_worker, stop_event,
)
from taskflow.supervise import cancel_and_wait

log = logging.getLogger(__name__)

# Seconds a child gets beyond its own shutdown (worker.shutdown_grace, then the hand-back;
# uvicorn's 10 s for open requests) before the supervisor kills it.
STOP_MARGIN = 10.0


def _command(args: argparse.Namespace, role: list[str]) -> list[str]:
    """A child's command line: this ``taskflow``, its settings environment, ``role``."""
    return [sys.executable, "-m", "taskflow.cli",
            *(["--env", args.env] if args.env else []), *role]


def _env(settings: Settings, db: str, rds: str) -> dict[str, str]:
    """The children's environment: ours, plus the URL of each embedded server this process
    started (so they use it rather than start their own). Configured URLs the children
    read from the settings as we did."""
    env = dict(os.environ)
    if not settings.database_url:
        env["TASKFLOW_DATABASE_URL"] = db
    if not settings.redis_url:
        env["TASKFLOW_REDIS_URL"] = rds
    return env


async def _supervise(supervisor: Supervisor, collector: PageCollector,
                     duties: list[asyncio.Task[None]],
                     serving: Callable[[], contextlib.AbstractAsyncContextManager[None]]) -> int:
    """Run ``supervisor`` inside ``serving`` (an async context), then end the duties."""
    stop = stop_event(forward=supervisor.forward)
    supervisor.on_exit = collector.retire
    try:
        async with serving():
            return await supervisor.run(stop)
    finally:
        await cancel_and_wait(*duties)


def _processes_check(supervisor: Supervisor) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        up = supervisor.ready()
        if up < supervisor.count:
            raise NotReady(f"{up} of {supervisor.count} up")
    return check


async def supervise_workers(settings: Settings, args: argparse.Namespace, db: str, rds: str,
                            count: int) -> None:
    """``taskflow work`` with ``count`` worker processes."""
    queues = list(args.queues or settings.worker.queues)
    role = ["work", *[a for q in args.queues or () for a in ("--queue", q)],
            *(["--concurrency", str(args.concurrency)] if args.concurrency else [])]
    async with open_stores(settings, db, rds, apply_migrations=args.migrate) as stores:
        supervisor = Supervisor("worker", count, _command(args, role),
                                env=_env(settings, db, rds),
                                stop_timeout=settings.worker.shutdown_grace + STOP_MARGIN)
        collector = PageCollector(supervisor.folder, count, metrics.page)
        checks = {"postgres": stores.store.ping, "redis": stores.dispatch.ping,
                  "processes": _processes_check(supervisor)}
        duties = [cluster_stats(settings, stores, queues),
                  maintenance_duty(settings, stores, queues)]
        serving = functools.partial(
            ops_server, settings.worker.metrics_host, settings.worker.metrics_port, checks,
            page=collector.page)
        code = await _supervise(supervisor, collector, duties, serving)
    if code:
        sys.exit(code)


async def supervise_api(settings: Settings, args: argparse.Namespace, db: str, rds: str,
                        count: int, sock: socket.socket) -> None:
    """``taskflow serve`` with ``count`` API processes accepting on ``sock``."""
    from taskflow.api.server import GRACEFUL_SHUTDOWN, url_of

    fd = sock.fileno()
    async with open_stores(settings, db, rds, apply_migrations=args.migrate) as stores:
        supervisor = Supervisor("api", count,
                                _command(args, ["serve", "--listen-fd", str(fd)]),
                                env=_env(settings, db, rds), pass_fds=[fd],
                                stop_timeout=GRACEFUL_SHUTDOWN + STOP_MARGIN)
        collector = PageCollector(supervisor.folder, count, metrics.page)
        duties = [cluster_stats(settings, stores, list(settings.queues))]
        serving = functools.partial(serve_page, merged_socket_path(supervisor.folder),
                                    collector.page)
        log.info("API listening on %s (%d processes)", url_of(sock), count)
        code = await _supervise(supervisor, collector, duties, serving)
    if code:
        sys.exit(code)


async def worker_child(settings: Settings, args: argparse.Namespace, db: str, rds: str,
                       stop: asyncio.Event) -> None:
    """One of a supervisor's worker processes: no maintenance, no queue gauges (the
    supervisor runs them), its page on its unix socket."""
    watch_parent(args.parent_fd, stop)
    async with open_stores(settings, db, rds) as stores:
        async with serve_page(socket_path(args.child_dir, args.child_slot), own_page):
            await run_worker(settings, stores, stop, queues=args.queues,
                             concurrency=args.concurrency, maintenance=False)


async def api_child(settings: Settings, args: argparse.Namespace, db: str, rds: str,
                    stop: asyncio.Event) -> None:
    """One of a supervisor's API processes, accepting on the socket it inherited."""
    from taskflow.api.app import create_app
    from taskflow.api.server import run_api

    watch_parent(args.parent_fd, stop)
    sock = socket.socket(fileno=args.listen_fd)
    merged = functools.partial(fetch_page, merged_socket_path(args.child_dir), 5.0)
    async with open_stores(settings, db, rds) as stores:
        app = create_app(settings, stores, merged_metrics=merged)
        own = app.state.api.metrics.exposition
        async with serve_page(socket_path(args.child_dir, args.child_slot),
                              functools.partial(asyncio.to_thread, own)):
            await run_api(app, sock, stop)
