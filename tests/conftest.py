"""Test servers: the ones named by TASKFLOW_DATABASE_URL / TASKFLOW_REDIS_URL, or embedded
PostgreSQL and Redis started for the session (so the suite runs on a bare machine).

A session gets its own database (created, then dropped); Redis is flushed before every
test that uses it, so point TASKFLOW_REDIS_URL only at a disposable Redis database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from taskflow.adapters.embedded import EmbeddedPostgres, EmbeddedRedis
from taskflow.config import Settings, settings_from_dict
from taskflow.index import IndexGuard
from taskflow.runtime import Stores, open_stores
from tests.notify_servers import Receiver


class TestServers:
    def __init__(self, database_url: str, redis_url: str, data_dir: Path) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.data_dir = data_dir


def _with_database(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def servers() -> Iterator[TestServers]:
    data_dir = Path(tempfile.mkdtemp(prefix="taskflow-test-"))
    os.chmod(data_dir, 0o755)  # embedded PostgreSQL runs as its own system user
    started: list = []
    admin_url = os.environ.get("TASKFLOW_DATABASE_URL", "")
    if not admin_url:
        pg = EmbeddedPostgres(data_dir / "postgres")
        started.append(pg)
        admin_url = pg.url
    redis_url = os.environ.get("TASKFLOW_REDIS_URL", "")
    if not redis_url:
        rd = EmbeddedRedis(data_dir / "redis")
        started.append(rd)
        redis_url = rd.url
    name = f"taskflow_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(create())
    try:
        yield TestServers(_with_database(admin_url, name), redis_url, data_dir)
    finally:
        asyncio.run(drop())
        for server in reversed(started):
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def make_settings(servers: TestServers, **overrides: object) -> Settings:
    """Settings for tests: short leases and intervals so recovery paths run in seconds."""
    data: dict = {
        "database_url": servers.database_url,
        "redis_url": servers.redis_url,
        "data_dir": str(servers.data_dir),
        "log_level": "WARNING",
        "worker": {"lease_ttl": 2.0, "heartbeat_interval": 0.5, "shutdown_grace": 5.0,
                   "concurrency": 20, "max_idle_wait": 1.0},
        "maintenance": {"reaper_interval": 0.2, "reconcile_interval": 1.0},
        "retry": {"base_delay": 0.05, "max_delay": 0.5, "jitter": 0.0, "max_attempts": 3},
        "outbound": {"allowed_networks": ["127.0.0.0/8"]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return settings_from_dict(data)


@pytest.fixture(scope="session")
def settings(servers: TestServers) -> Settings:
    return make_settings(servers)


@pytest.fixture(scope="session")
async def migrated(servers: TestServers, settings: Settings) -> None:
    async with open_stores(settings, servers.database_url, servers.redis_url,
                           apply_migrations=True):
        pass


@pytest.fixture
async def stores(servers: TestServers, settings: Settings, migrated: None) -> AsyncIterator[Stores]:
    """Stores over an empty database and an empty Redis."""
    async with open_stores(settings, servers.database_url, servers.redis_url) as s:
        await s.store.pool.execute(
            "TRUNCATE jobs, job_attempts, job_dependencies, workflows, jobs_unindexed")
        await s.dispatch.client.flushdb()
        # An empty index over an empty database: marked, so that a worker's maintenance
        # does not start a rebuild pass in the middle of the test.
        await IndexGuard(s.store, s.dispatch).check()
        yield s


@pytest.fixture
async def redis_client(servers: TestServers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(servers.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (see tests.notify_servers)."""
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.close()
