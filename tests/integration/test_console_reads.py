"""The read endpoints the web console is built on (``GET /queues``, ``GET /workflows``,
a workflow's edges, a job's dependencies, dead letters by tenant), against real
PostgreSQL and Redis, a real worker and the app in this event loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import msgspec

from taskflow.adapters.observe import Observer
from taskflow.api.app import create_app
from taskflow.api.controllers import queues as queues_controller
from taskflow.api.controllers import workflows as workflows_controller
from taskflow import dag
from taskflow.ids import uuid7
from tests.helpers import running_worker, wait_until

SECRET = "c" * 32


def _auth(tenant: str, scope: str = "tasks:read tasks:write") -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode(
        {"tenant": tenant, "scope": scope, "sub": "x", "exp": int(time.time()) + 600},
        SECRET, algorithm="HS256")}


ALICE, BOB, ADMIN = _auth("alice"), _auth("bob"), _auth("ops", "admin")


@contextlib.asynccontextmanager
async def _api(stores, settings) -> AsyncIterator[httpx.AsyncClient]:
    cfg = msgspec.structs.replace(settings, jwt_secret=SECRET)
    app = create_app(cfg, stores)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                     timeout=30) as client:
            yield client


def _queue(body: dict, name: str) -> dict:
    return next(q for q in body["queues"] if q["name"] == name)


async def _get(client: httpx.AsyncClient, path: str, headers: dict, **params) -> dict:
    answer = await client.get(path, headers=headers, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_queue_figures_follow_the_jobs_of_the_callers_tenant(stores, settings):
    async with _api(stores, settings) as client:
        empty = await _get(client, "/queues", ALICE)
        assert [q["name"] for q in empty["queues"]] == list(settings.queues)
        assert _queue(empty, "default")["ready"] == 0
        assert empty["complete"] is True
        for spec in ({"task": "noop"},) * 3 + ({"task": "fail", "max_attempts": 1},) * 2 + (
                {"task": "noop", "delay": 3600},):
            answer = await client.post("/tasks", json=spec, headers=ALICE)
            assert answer.status_code == 201, answer.text
        waiting = _queue(await _get(client, "/queues", ALICE), "default")
        assert (waiting["ready"], waiting["scheduled"], waiting["running"]) == (5, 1, 0)
        assert waiting["oldest_ready_age"] is not None and waiting["oldest_ready_age"] >= 0
        # Another tenant sees none of it; an admin sees it, and can narrow to a tenant.
        assert _queue(await _get(client, "/queues", BOB), "default")["ready"] == 0
        assert _queue(await _get(client, "/queues", ADMIN), "default")["ready"] == 5
        assert _queue(await _get(client, "/queues", ADMIN, tenant="bob"), "default")[
            "ready"] == 0

        async with running_worker(stores, settings) as worker:
            async def settled() -> dict | None:
                body = await _get(client, "/queues", ALICE, minutes=5)
                q = _queue(body, "default")
                return body if q["ready"] == 0 and q["failed_last_hour"] == 2 else None

            body = await wait_until(settled)
            workers = await wait_until(lambda: _workers(client))
            assert worker.name in [w["name"] for w in workers]
            # A running job counts on its worker for its tenant only.
            answer = await client.post("/tasks", headers=ALICE,
                                       json={"task": "sleep", "payload": {"seconds": 30}})
            sleeper = answer.json()["id"]

            async def running(who: dict) -> int:
                body = await _get(client, "/queues", who)
                return next(w["running"] for w in body["workers"] if w["name"] == worker.name)

            await wait_until(lambda: _equals(running(ALICE), 1))
            assert await running(BOB) == 0 and await running(ADMIN) == 1
            assert (await client.post(f"/tasks/{sleeper}/cancel", headers=ALICE)).status_code \
                == 202
            await wait_until(lambda: _equals(running(ALICE), 0))
        q = _queue(body, "default")
        assert len(q["throughput"]) == 5
        assert sum(m["succeeded"] for m in q["throughput"]) == 3
        assert sum(m["failed"] for m in q["throughput"]) == 2
        assert q["scheduled"] == 1 and q["oldest_ready_age"] is None
        assert _queue(await _get(client, "/queues", BOB), "default")["failed_last_hour"] == 0


async def _equals(value, expected) -> bool:
    return await value == expected


async def _workers(client: httpx.AsyncClient) -> list[dict]:
    return (await _get(client, "/queues", ALICE))["workers"]


async def _insert_jobs(pool, tenant: str, queue: str, n: int, state: str = "queued",
                       age: float = 0.0, worker: str | None = None) -> list[str]:
    """``n`` jobs straight into PostgreSQL (ids in creation order), due ``age`` s ago."""
    ids = [str(uuid7()) for _ in range(n)]
    await pool.execute(
        "INSERT INTO jobs (id, tenant, task, queue, run_at, state, max_attempts, worker)"
        " SELECT i, $2, 'noop', $3, now() - make_interval(secs => $4), $5::job_state, 3, $6"
        " FROM unnest($1::uuid[]) AS i", ids, tenant, queue, age, state, worker)
    return ids


async def test_queue_figures_sample_the_oldest_waiting_jobs_and_count_every_running_one(
        stores, settings, monkeypatch):
    """Beyond the scan limit the figures were a sample of the first rows in (tenant,
    queue) order: later tenants and queues vanished, running jobs read 0."""
    monkeypatch.setattr(queues_controller, "BACKLOG_SCAN_LIMIT", 20)
    pool = stores.store.pool
    overdue = await _insert_jobs(pool, "zz", "zq", 3, age=86_400)  # oldest: a day overdue
    await _insert_jobs(pool, "aa", "default", 30)  # first in (tenant, queue) order
    running = await _insert_jobs(pool, "zz", "default", 4, state="running", worker="w1")
    running += await _insert_jobs(pool, "aa", "other", 2, state="running", worker="w1")
    dispatch = stores.dispatch
    for queue, ids in (("default", running[:4]), ("other", running[4:])):
        await dispatch.client.zadd(dispatch.keys(queue).inflight,
                                   {f"{i}|token": 1 for i in ids})
    await dispatch.client.zadd(dispatch.keys("default").inflight, {f"{overdue[0]}|x": 1})
    await Observer(dispatch).heartbeat("w1", ["default", "other"], 60)
    async with _api(stores, settings) as client:
        body = await _get(client, "/queues", ADMIN)
        assert body["complete"] is False  # 33 waiting, 21 read (the limit and one more)
        zq, default = _queue(body, "zq"), _queue(body, "default")
        assert zq["ready"] == 3 and zq["oldest_ready_age"] >= 86_400
        assert (default["ready"], default["running"]) == (18, 4)
        assert _queue(body, "other")["running"] == 2
        assert [(w["name"], w["running"]) for w in body["workers"]] == [("w1", 6)]

        mine = await _get(client, "/queues", _auth("zz"))
        assert mine["complete"] is True  # exactly the 3 waiting: counted in full
        assert (_queue(mine, "zq")["ready"], _queue(mine, "default")["running"]) == (3, 4)
        assert [(w["name"], w["running"]) for w in mine["workers"]] == [("w1", 4)]
        # A declared queue is listed even when the sample holds none of its jobs.
        assert [q["name"] for q in mine["queues"]][:len(settings.queues)] == list(
            settings.queues)

        monkeypatch.setattr(queues_controller, "BACKLOG_SCAN_LIMIT", 3)
        assert (await _get(client, "/queues", _auth("zz")))["complete"] is True  # 3 of 3


async def test_the_hour_of_ended_jobs_is_read_a_few_minutes_a_request(stores, settings):
    async with _api(stores, settings) as client:
        seen = [(await _get(client, "/queues", BOB))["hour_complete"] for _ in range(13)]
        assert seen[0] is False and seen[-1] is True


async def test_queue_figures_reject_bad_input(stores, settings):
    async with _api(stores, settings) as client:
        assert (await client.get("/queues", headers=ALICE,
                                 params={"minutes": 0})).status_code == 422
        assert (await client.get("/queues", headers=ALICE,
                                 params={"minutes": 61})).status_code == 422
        forbidden = await client.get("/queues", headers=ALICE, params={"tenant": "bob"})
        assert forbidden.status_code == 403 and forbidden.json()["field"] == "tenant"
        assert (await client.get("/queues")).status_code == 401


async def test_workflow_list_edges_and_job_dependencies(stores, settings):
    spec = {"name": "etl", "jobs": [
        {"name": "extract", "task": "noop"},
        {"name": "clean", "task": "noop", "after": ["extract"]},
        {"name": "load", "task": "noop", "after": ["extract", "clean"]}]}
    async with _api(stores, settings) as client:
        created = await client.post("/workflows", json=spec, headers=ALICE)
        assert created.status_code == 201, created.text
        wf, ids = created.json()["id"], created.json()["jobs"]
        page = await _get(client, "/workflows", ALICE)
        assert [(w["id"], w["state"], w["jobs"], w["unfinished"]) for w in page["items"]] \
            == [(wf, "running", 3, 3)]
        assert (await _get(client, "/workflows", BOB))["items"] == []
        assert [w["id"] for w in (await _get(client, "/workflows", ADMIN))["items"]] == [wf]

        edges = await _get(client, f"/workflows/{wf}/edges", ALICE)
        assert sorted((e["upstream"], e["job"]) for e in edges["edges"]) == sorted([
            (ids["extract"], ids["clean"]), (ids["extract"], ids["load"]),
            (ids["clean"], ids["load"])])
        assert (await client.get(f"/workflows/{wf}/edges", headers=BOB)).status_code == 404

        links = await _get(client, f"/tasks/{ids['clean']}/dependencies", ALICE)
        assert [(j["id"], j["node"]) for j in links["upstream"]] == [(ids["extract"], "extract")]
        assert [j["id"] for j in links["downstream"]] == [ids["load"]]
        assert links["more"] is False
        cut = await _get(client, f"/tasks/{ids['extract']}/dependencies", ALICE, limit=1)
        assert len(cut["downstream"]) == 1 and cut["more"] is True
        assert (await client.get(f"/tasks/{ids['clean']}/dependencies",
                                 headers=BOB)).status_code == 404

        async with running_worker(stores, settings):
            await wait_until(lambda: _workflow_state(client, wf, "succeeded"))
        page = await _get(client, "/workflows", ALICE, limit=1)
        assert page["items"][0]["state"] == "succeeded" and page["next_cursor"] is None


async def test_workflow_list_counts_each_workflow_up_to_a_cap(stores, settings, monkeypatch):
    """A page read every job of each listed workflow (50 workflows of 20,000 jobs: 3.8 s);
    now at most the cap, and the state stays exact while any job is unfinished."""
    monkeypatch.setattr(workflows_controller, "LIST_COUNT_CAP", 3)
    async with _api(stores, settings) as client:
        made = await client.post("/workflows", headers=ALICE, json={
            "name": "wide", "jobs": [{"name": f"n{i}", "task": "noop"} for i in range(6)]})
        assert made.status_code == 201, made.text
        ids = list(made.json()["jobs"].values())
        pool = stores.store.pool
        # All ended but one, which the count may miss: still running.
        await pool.execute("UPDATE jobs SET state = 'succeeded', finished_at = now()"
                           " WHERE id = ANY($1::uuid[])", ids[:-1])
        [w] = (await _get(client, "/workflows", ALICE))["items"]
        assert (w["jobs"], w["more_jobs"], w["state"]) == (3, True, "running")
        await pool.execute("UPDATE jobs SET state = 'succeeded', finished_at = now()"
                           " WHERE id = $1", ids[-1])
        [w] = (await _get(client, "/workflows", ALICE))["items"]
        assert (w["jobs"], w["unfinished"], w["state"]) == (3, 0, "succeeded")
        small = await client.post("/workflows", headers=ALICE, json={
            "name": "small", "jobs": [{"name": "a", "task": "noop"}]})
        first = (await _get(client, "/workflows", ALICE))["items"][0]
        assert (first["id"], first["jobs"], first["more_jobs"]) == (
            small.json()["id"], 1, False)
        assert (await client.get("/workflows", headers=ALICE,
                                 params={"limit": 101})).status_code == 422


async def test_a_workflow_with_too_many_edges_is_refused(stores, settings, monkeypatch):
    """Its edges are read whole (GET /workflows/{id}/edges): their number is bounded."""
    monkeypatch.setattr(dag, "MAX_EDGES", 2)
    async with _api(stores, settings) as client:
        answer = await client.post("/workflows", headers=ALICE, json={"name": "w", "jobs": [
            {"name": "a", "task": "noop"}, {"name": "b", "task": "noop", "after": ["a"]},
            {"name": "c", "task": "noop", "after": ["a", "b"]}]})
        assert answer.status_code == 422 and answer.json()["field"] == "jobs"
        assert "at most 2 dependencies" in answer.text


async def _workflow_state(client: httpx.AsyncClient, wf: str, state: str) -> bool:
    return (await _get(client, "/workflows", ALICE))["items"][0]["state"] == state


async def test_workflow_list_pages_newest_first(stores, settings):
    async with _api(stores, settings) as client:
        made = []
        for i in range(3):
            answer = await client.post("/workflows", headers=ALICE, json={
                "name": f"w{i}", "jobs": [{"name": "a", "task": "noop"}]})
            made.append(answer.json()["id"])
        first = await _get(client, "/workflows", ALICE, limit=2)
        second = await _get(client, "/workflows", ALICE, limit=2, cursor=first["next_cursor"])
        assert [w["id"] for w in first["items"] + second["items"]] == made[::-1]
        assert second["next_cursor"] is None


async def test_admin_filters_dead_letters_by_tenant(stores, settings):
    async with _api(stores, settings) as client, running_worker(stores, settings):
        for who in (ALICE, BOB):
            answer = await client.post("/tasks?wait=20", headers=who,
                                       json={"task": "fail", "max_attempts": 1})
            assert answer.json()["state"] == "failed", answer.text
        assert {j["tenant"] for j in (await _get(client, "/dead-letters", ADMIN))["items"]} \
            == {"alice", "bob"}
        only = await _get(client, "/dead-letters", ADMIN, tenant="bob")
        assert [j["tenant"] for j in only["items"]] == ["bob"]
        assert (await client.get("/dead-letters", headers=ALICE,
                                 params={"tenant": "bob"})).status_code == 403


async def test_the_console_is_served_without_a_token_under_a_strict_csp(stores, settings):
    async with _api(stores, settings) as client:
        root = await client.get("/")
        assert root.status_code in (301, 302, 307, 308) and root.headers["location"] == "/ui/"
        # HEAD as GET, for uptime probes.
        assert (await client.head("/")).status_code == 307
        assert (await client.head("/ui/")).status_code == 200
        page = await client.get("/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        # Only files of the package, as modules: no inline script in the page.
        assert '<script type="module" src="/ui/js/app.js"></script>' in page.text
        assert "<script>" not in page.text and "style=" not in page.text
        script = await client.get("/ui/js/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert script.headers["content-security-policy"] == csp
        vendored = await client.get("/ui/vendor/dagre.esm.js")
        assert vendored.status_code == 200
        assert (await client.get("/ui/no-such-file.js")).status_code == 404
        # Without the slash too (the page names its files by absolute paths).
        bare = await client.get("/ui")
        assert bare.status_code == 200 and bare.text == page.text
        # The API's paths still need a token, and the schema does not list the console.
        assert (await client.get("/tasks")).status_code == 401
        schema = (await client.get("/schema/openapi.json")).json()
        assert not [p for p in schema["paths"] if p == "/" or p.startswith("/ui")]
