"""DAG dependencies and workflows over HTTP, against ``taskflow serve`` and ``taskflow
work`` processes: release, failure cascade, retry that releases again, validation,
tenancy and workflow cancel."""

from __future__ import annotations

import pytest

from tests.e2e.api_stack import TERMINAL, Client, token

pytestmark = pytest.mark.slow


async def test_depends_on_waits_for_upstreams_and_passes_their_results(client: Client):
    a = (await client.post("/tasks", json={"task": "echo", "payload": {"a": 1}})).body
    b = (await client.post("/tasks", json={"task": "sleep", "payload": {"seconds": 0.3}})).body
    child = await client.post("/tasks", json={"task": "echo", "depends_on": [a["id"], b["id"]]})
    assert child.status == 201, child
    assert child.body["state"] == "blocked" and child.body["pending_upstreams"] >= 1
    done = await client.wait_state(child.body["id"], TERMINAL)
    assert done["state"] == "succeeded" and done["pending_upstreams"] == 0
    upstream_done = [await client.get(f"/tasks/{x['id']}") for x in (a, b)]
    assert all(u.body["finished_at"] <= done["started_at"] for u in upstream_done)


async def test_depends_on_unknown_or_other_tenants_job_is_rejected_naming_it(
        stack, http, client: Client):
    theirs = await Client(http, stack.url, token("another-tenant")).post(
        "/tasks", json={"task": "noop", "queue": "parked"})
    missing = "01900000-0000-7000-8000-000000000000"
    for upstream in (theirs.body["id"], missing):
        reply = await client.post("/tasks", json={"task": "noop", "depends_on": [upstream]})
        assert reply.status == 422, reply
        assert reply.body["field"] == "depends_on" and upstream in reply.body["detail"]
    mine = (await client.post("/tasks", json={"task": "noop", "queue": "parked"})).body
    batch = await client.post("/tasks/batch", json={"tasks": [
        {"task": "noop", "depends_on": [mine["id"]]},
        {"task": "noop", "depends_on": [mine["id"], missing]}]})
    assert batch.status == 422 and batch.body["field"] == "tasks[1].depends_on", batch
    assert (await client.get("/tasks?queue=default")).body["items"] == []  # nothing written


async def test_workflow_diamond_runs_and_reports_its_state(client: Client):
    reply = await client.post("/workflows", json={"name": "etl", "jobs": [
        {"name": "extract", "task": "echo", "payload": {"rows": 3}},
        {"name": "clean", "task": "echo", "after": ["extract"]},
        {"name": "enrich", "task": "echo", "after": ["extract"]},
        {"name": "load", "task": "echo", "after": ["clean", "enrich"], "priority": 5},
    ]})
    assert reply.status == 201, reply
    ids = reply.body["jobs"]
    assert set(ids) == {"extract", "clean", "enrich", "load"}
    flow = await client.wait_workflow(reply.body["id"], {"succeeded", "failed", "cancelled"})
    assert flow["state"] == "succeeded" and flow["name"] == "etl"
    by_name = {j["name"]: j for j in flow["jobs"]}
    assert by_name["load"]["started_at"] >= max(by_name["clean"]["finished_at"],
                                                by_name["enrich"]["finished_at"])
    load = (await client.get(f"/tasks/{ids['load']}")).body
    assert load["workflow_id"] == reply.body["id"] and load["node"] == "load"
    assert load["priority"] == 5


async def test_failed_node_cancels_its_descendants_and_its_retry_releases_them(client: Client):
    reply = await client.post("/workflows", json={"name": "fragile", "jobs": [
        {"name": "a", "task": "noop"},
        {"name": "b", "task": "fail", "payload": {"times": 1}, "max_attempts": 1,
         "after": ["a"]},
        {"name": "c", "task": "noop", "after": ["b"]},
        {"name": "d", "task": "noop", "after": ["c"]},
        {"name": "e", "task": "noop", "after": ["a"]},
    ]})
    assert reply.status == 201, reply
    ids = reply.body["jobs"]
    flow = await client.wait_workflow(reply.body["id"], {"failed", "succeeded", "cancelled"})
    states = {j["name"]: j["state"] for j in flow["jobs"]}
    assert states == {"a": "succeeded", "b": "failed", "c": "cancelled", "d": "cancelled",
                      "e": "succeeded"}
    c = (await client.get(f"/tasks/{ids['c']}")).body
    assert c["cancelled_by"] == ids["b"] and "(b) ended failed" in c["error"]
    assert c["attempts"] == 0
    # b fails only its first attempt: retried by hand, it succeeds and releases c and d.
    retried = await client.post(f"/tasks/{ids['b']}/retry")
    assert retried.status == 200, retried
    again = await client.get(f"/tasks/{ids['c']}")
    assert again.body["state"] in ("blocked", "queued", "running", "succeeded")
    flow = await client.wait_workflow(reply.body["id"], {"succeeded", "failed", "cancelled"})
    assert flow["state"] == "succeeded", flow
    d = (await client.get(f"/tasks/{ids['d']}")).body
    assert d["attempts"] == 1 and d["cancelled_by"] is None and d["error"] is None


@pytest.mark.parametrize(("jobs", "message"), [
    ([{"name": "a", "task": "noop", "after": ["b"]}, {"name": "b", "task": "noop",
                                                      "after": ["c"]},
      {"name": "c", "task": "noop", "after": ["a"]}], "cycle: "),
    ([{"name": "a", "task": "noop", "after": ["a"]}], "job 'a' cannot run after itself"),
    ([{"name": "a", "task": "noop", "after": ["nope"]}], "runs after unknown job(s): 'nope'"),
    ([{"name": "a", "task": "noop"}, {"name": "a", "task": "echo"}],
     "duplicate job name(s): a"),
    ([{"name": "a", "task": "noop", "priority": 5000}], "jobs[0].priority"),
    ([{"name": "a", "task": "noop", "idempotency_key": "k"}], "jobs[0].idempotency_key"),
])
async def test_invalid_workflows_are_rejected_naming_the_problem(client: Client, jobs, message):
    reply = await client.post("/workflows", json={"name": "bad", "jobs": jobs})
    assert reply.status == 422, reply
    assert message in reply.body["detail"], reply.body
    assert (await client.get("/tasks")).body["items"] == []  # nothing was written


@pytest.mark.parametrize("name", ["a\u0000", "nightly\r\nBcc: x@example.com"])
async def test_a_workflow_name_with_a_control_character_is_a_422_naming_it(client: Client,
                                                                           name):
    reply = await client.post("/workflows", json={"name": name, "jobs": [
        {"name": "a", "task": "noop"}]})
    assert reply.status == 422 and reply.body["field"] == "name", reply


async def test_cycle_is_named_in_order(client: Client):
    reply = await client.post("/workflows", json={"name": "loop", "jobs": [
        {"name": "x", "task": "noop"},
        {"name": "a", "task": "noop", "after": ["x", "c"]},
        {"name": "b", "task": "noop", "after": ["a"]},
        {"name": "c", "task": "noop", "after": ["b"]},
    ]})
    assert reply.status == 422
    detail = reply.body["detail"]
    cycle = detail.split("cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    # each node runs after the previous one in the reported order
    after = {"a": "c", "b": "a", "c": "b"}
    assert all(after[nxt] == cur for cur, nxt in zip(cycle, cycle[1:]))


async def test_workflow_cancel_cancels_unfinished_jobs(stack, http, client: Client):
    reply = await client.post("/workflows", json={"name": "long", "jobs": [
        {"name": "slow", "task": "sleep", "payload": {"seconds": 30}},
        {"name": "after", "task": "noop", "after": ["slow"]},
        {"name": "later", "task": "noop", "delay": 3600},
    ]})
    ids = reply.body["jobs"]
    await client.wait_state(ids["slow"], {"running"})
    other = Client(http, stack.url, token("not-the-owner"))
    assert (await other.post(f"/workflows/{reply.body['id']}/cancel")).status == 404
    assert (await other.get(f"/workflows/{reply.body['id']}")).status == 404
    cancelled = await client.post(f"/workflows/{reply.body['id']}/cancel")
    assert cancelled.status == 200, cancelled
    flow = await client.wait_workflow(reply.body["id"], {"cancelled"})
    assert {j["state"] for j in flow["jobs"]} == {"cancelled"}
    slow = (await client.get(f"/tasks/{ids['slow']}/attempts")).body["items"]
    assert [a["outcome"] for a in slow] == ["cancelled"]
