"""Connects a process to its stores: the wiring every role shares."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from taskflow.adapters.embedded import EmbeddedServers
from taskflow.adapters.migrate import migrate
from taskflow.adapters.postgres import PostgresStore, create_pool
from taskflow.adapters.redis import RedisDispatch
from taskflow.config import Settings
from taskflow.index import IndexGuard

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
