"""``taskflow serve`` when a store is down: PostgreSQL down is a 503 and nothing is
written; Redis down after the commit still creates the job, and the reconciler of a
worker indexes it, so it runs."""

from __future__ import annotations

import pytest

from taskflow.adapters.embedded import free_port
from tests import conftest
from tests.e2e.api_stack import TERMINAL, Client, start_api, stop, token

pytestmark = pytest.mark.slow


async def test_postgres_down_is_503_and_not_ready(stack, http, tmp_path, tenant):
    dead = conftest.TestServers(f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                       stack.servers.redis_url, tmp_path)
    # pool_min = 0: the API starts without PostgreSQL and reports itself not ready.
    api, url = await start_api(dead, tmp_path / "api.log", **stack.env,
                               TASKFLOW_DATABASE__POOL_MIN="0")
    try:
        client = Client(http, url, token(tenant))
        submit = await client.post("/tasks", json={"task": "noop"})
        assert submit.status == 503, submit
        assert submit.headers["content-type"] == "application/problem+json"
        assert "unavailable" in submit.body["detail"]
        assert (await client.get("/tasks")).status == 503
        ready = await client.get("/readyz")
        assert ready.status == 503 and "PostgreSQL unreachable" in ready.body["detail"]
        assert (await client.get("/healthz")).status == 200
    finally:
        assert stop(api) == [0], api.output()
    # Nothing reached Redis either: the real stack's tenant view is empty.
    assert (await Client(http, stack.url, token(tenant)).get("/tasks")).body["items"] == []


async def test_redis_down_after_commit_the_reconciler_indexes_the_job(
        stack, http, tmp_path, tenant):
    broken = conftest.TestServers(stack.servers.database_url,
                         f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    api, url = await start_api(broken, tmp_path / "api.log", **stack.env)
    try:
        client = Client(http, url, token(tenant))
        submit = await client.post("/tasks", json={"task": "echo", "payload": {"ok": 1}})
        assert submit.status == 201, submit  # committed: the job exists
        ready = await client.get("/readyz")
        assert ready.status == 503 and "Redis unreachable" in ready.body["detail"]
    finally:
        assert stop(api) == [0], api.output()
    assert "could not index them in Redis" in api.output()
    # The stack's worker (reconcile_interval 1 s in tests) finds it in PostgreSQL.
    healthy = Client(http, stack.url, token(tenant))
    done = await healthy.wait_state(submit.body["id"], TERMINAL, timeout=30)
    assert done["state"] == "succeeded" and done["result"] == {"ok": 1}
