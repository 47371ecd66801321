"""Connects a process to its stores: the wiring every role shares."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence

from taskflow.adapters.embedded import EmbeddedServers
from taskflow.adapters.migrate import migrate
from taskflow.adapters.postgres import PostgresStore, create_pool
from taskflow.adapters.redis import RedisDispatch
from taskflow.config import Settings
from taskflow.index import IndexGuard
from taskflow.supervise import cancel_and_wait, supervised

log = logging.getLogger(__name__)


class Stores:
    """The PostgreSQL store and the Redis dispatch index of one process."""

    def __init__(self, store: PostgresStore, dispatch: RedisDispatch) -> None:
        self.store = store
        self.dispatch = dispatch


@contextlib.contextmanager
def servers(settings: Settings):
    """Embedded PostgreSQL/Redis for whichever URL the settings leave empty."""
    embedded = EmbeddedServers(settings.data_dir, settings.database_url, settings.redis_url)
    try:
        yield embedded
    finally:
        embedded.stop()


@contextlib.asynccontextmanager
async def open_stores(
    settings: Settings, database_url: str, redis_url: str, *, apply_migrations: bool = False
) -> AsyncIterator[Stores]:
    if apply_migrations:
        pool = await create_pool(database_url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                applied = await migrate(conn, settings.migrations_path)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        finally:
            await pool.close()
    pool = await create_pool(
        database_url, min_size=settings.database.pool_min, max_size=settings.database.pool_max,
        command_timeout=settings.database.command_timeout,
    )
    dispatch = RedisDispatch.from_url(
        redis_url, settings.redis_prefix, socket_timeout=settings.redis.socket_timeout,
        connect_timeout=settings.redis.connect_timeout)
    store = PostgresStore(pool)
    try:
        await IndexGuard(store, dispatch).check(may_rebuild=False)
    except Exception as exc:  # noqa: BLE001 - a store down at start: the reaper checks later
        log.warning("could not check the dispatch index at start (%r)", exc)
    try:
        yield Stores(store, dispatch)
    finally:
        await dispatch.close()
        await store.close()


def freeze_startup_heap() -> None:
    """Take what a role has loaded by the time it serves (modules, settings, pools: ~90,000
    objects) out of the cyclic garbage collector's sight, once, garbage collected first.
    Each full collection walks every tracked object: those made one ~30 ms stop of the
    event loop, twice per 10,000 jobs in a worker's drain (~20 % of its time went to
    collections), and in the middle of requests. Frozen objects are still freed by
    reference counting; only cycles among them would stay, and startup leaves none."""
    gc.collect()
    gc.freeze()


def stop_event(forward: Callable[[int], None] | None = None) -> asyncio.Event:
    """Set on SIGTERM or SIGINT; a second signal exits at once. ``forward`` is called
    with each signal first (a supervisor passes it on to its children)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if forward is not None:
            forward(signum)
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            sys.exit(1)
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def run_worker(settings: Settings, stores: Stores, stop: asyncio.Event, *,
                     queues: Sequence[str] | None = None, concurrency: int | None = None,
                     maintenance: bool = True) -> None:
    """Run a worker until ``stop`` (``queues`` and ``concurrency`` default to the
    settings'); with its maintenance duties unless a supervisor runs them, once for all
    its worker processes."""
    from taskflow.worker.builtins import builtin_registry
    from taskflow.worker.registry import default_registry, import_handler_modules
    from taskflow.worker.worker import Worker

    import_handler_modules(settings.worker.handler_modules)
    builtins, outbound = builtin_registry(settings.outbound)
    registry = builtins.merged(default_registry)
    worker = Worker(settings, stores.store, stores.dispatch, registry,
                    queues=queues, concurrency=concurrency)
    duties = [maintenance_duty(settings, stores, worker.queues)] if maintenance else []
    freeze_startup_heap()
    try:
        await worker.run(stop)
    finally:
        await cancel_and_wait(*duties)
        await outbound.close()


def maintenance_duty(settings: Settings, stores: Stores, queues: list[str]) -> asyncio.Task[None]:
    """The reaper and reconciler of ``queues`` (:mod:`taskflow.worker.maintenance`)."""
    from taskflow.worker.maintenance import Maintenance

    return asyncio.create_task(
        Maintenance(settings, stores.store, stores.dispatch, queues).run())


def cluster_stats(settings: Settings, stores: Stores, queues: list[str]) -> asyncio.Task[None]:
    """The duty that refreshes the queue gauges (:mod:`taskflow.stats`) of ``queues``."""
    from taskflow.adapters.observe import Observer
    from taskflow.stats import refresh_forever

    observer = Observer(stores.dispatch, stores.store.pool)
    return asyncio.create_task(supervised(
        "queue stats",
        lambda: refresh_forever(observer, queues, settings.metrics.stats_interval)))
