"""The API (``taskflow serve``) and a worker (``taskflow work``) as processes, driven over
HTTP: the job lifecycle, idempotency, batches, paging, cancel and retry."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.e2e.api_stack import TERMINAL, Client, token

pytestmark = pytest.mark.slow


async def test_submitted_job_runs_to_succeeded(client: Client, tenant: str):
    reply = await client.post("/tasks", json={"task": "echo", "payload": {"n": 1},
                                              "labels": {"team": "a"}, "priority": 5})
    assert reply.status == 201, reply
    job = reply.body
    assert job["state"] == "queued" and job["tenant"] == tenant and job["priority"] == 5
    assert job["attempts"] == 0 and job["max_attempts"] == 3 and job["labels"] == {"team": "a"}
    done = await client.wait_state(job["id"], TERMINAL)
    assert done["state"] == "succeeded"
    assert done["result"] == {"n": 1}
    assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]
    attempts = await client.get(f"/tasks/{job['id']}/attempts")
    assert attempts.status == 200
    assert [a["outcome"] for a in attempts.body["items"]] == ["succeeded"]


async def test_repeated_idempotency_key_answers_the_first_job(stack, http, client: Client):
    spec = {"task": "noop", "idempotency_key": "order-42", "queue": "parked"}
    first = await client.post("/tasks", json=spec)
    again = await client.post("/tasks", json={**spec, "payload": {"other": True}})
    assert (first.status, again.status) == (201, 200)
    assert again.body["id"] == first.body["id"] and again.body["payload"] == {}
    listed = await client.get("/tasks")
    assert [j["id"] for j in listed.body["items"]] == [first.body["id"]]
    # The key is the tenant's own: another tenant's same key makes a new job.
    other = Client(http, stack.url, token("someone-else"))
    theirs = await other.post("/tasks", json=spec)
    assert theirs.status == 201 and theirs.body["id"] != first.body["id"]


async def test_concurrent_submits_with_one_key_create_one_job(client: Client):
    spec = {"task": "noop", "idempotency_key": "same", "queue": "parked"}
    replies = await asyncio.gather(*[client.post("/tasks", json=spec) for _ in range(20)])
    assert sorted(r.status for r in replies) == [200] * 19 + [201]
    assert len({r.body["id"] for r in replies}) == 1


async def test_batch_creates_all_in_order_and_they_run(client: Client):
    specs = [{"task": "echo", "payload": {"i": i}} for i in range(1000)]
    reply = await client.post("/tasks/batch", json={"tasks": specs})
    assert reply.status == 201, reply
    ids = reply.body["ids"]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    for i in (0, 517, 999):
        job = await client.wait_state(ids[i], {"succeeded"})
        assert job["result"] == {"i": i}
    page = await client.get("/tasks", params={"state": "succeeded", "limit": "1000"})
    deadline = asyncio.get_running_loop().time() + 30
    while len(page.body["items"]) < 1000:
        assert asyncio.get_running_loop().time() < deadline, len(page.body["items"])
        await asyncio.sleep(0.2)
        page = await client.get("/tasks", params={"state": "succeeded", "limit": "1000"})
    assert sorted(j["id"] for j in page.body["items"]) == sorted(ids)


async def test_batch_is_all_or_nothing(client: Client):
    specs = [{"task": "noop"}, {"task": "noop"}, {"task": "noop", "priority": 5000}]
    reply = await client.post("/tasks/batch", json={"tasks": specs})
    assert reply.status == 422
    assert reply.body["field"] == "tasks[2].priority"
    assert (await client.get("/tasks")).body["items"] == []


async def test_list_pages_newest_first_with_filters(client: Client):
    ids = []
    for i in range(25):
        reply = await client.post("/tasks", json={
            "task": "noop", "delay": 3600, "queue": "q1" if i % 2 else "q2",
            "labels": {"parity": "odd" if i % 2 else "even", "batch": "b1"}})
        assert reply.status == 201
        ids.append(reply.body["id"])
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        page = await client.get("/tasks", params=params)
        assert page.status == 200, page
        pages += 1
        seen += [j["id"] for j in page.body["items"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(reversed(ids))
    odd = await client.get("/tasks", params={"label": "parity=odd", "state": "scheduled"})
    assert [j["id"] for j in odd.body["items"]] == list(reversed(ids[1::2]))
    q2 = await client.get("/tasks", params=[("queue", "q2"), ("label", "batch=b1"),
                                            ("task", "noop")])
    assert [j["id"] for j in q2.body["items"]] == list(reversed(ids[0::2]))
    none = await client.get("/tasks", params={"state": "running"})
    assert none.body == {"items": [], "next_cursor": None}
    first = (await client.get(f"/tasks/{ids[0]}")).body["created_at"]
    after = await client.get("/tasks", params={"created_after": first, "limit": "1000"})
    assert len(after.body["items"]) == 25
    before = await client.get("/tasks", params={"created_before": first})
    assert before.body["items"] == []


async def test_cancel_queued_and_scheduled_jobs_at_once(client: Client):
    queued = (await client.post("/tasks", json={"task": "noop", "queue": "parked"})).body
    scheduled = (await client.post("/tasks", json={"task": "noop", "delay": 600})).body
    assert (queued["state"], scheduled["state"]) == ("queued", "scheduled")
    for job in (queued, scheduled):
        reply = await client.post(f"/tasks/{job['id']}/cancel")
        assert reply.status == 200 and reply.body["state"] == "cancelled"
        assert reply.body["finished_at"] is not None
        again = await client.post(f"/tasks/{job['id']}/cancel")
        assert again.status == 200 and again.body["state"] == "cancelled"
        attempts = await client.get(f"/tasks/{job['id']}/attempts")
        assert attempts.body["items"] == []  # it never started


async def test_cancel_running_job_stops_its_handler(client: Client):
    job = (await client.post("/tasks", json={"task": "sleep", "payload": {"seconds": 60}})).body
    await client.wait_state(job["id"], {"running"})
    reply = await client.post(f"/tasks/{job['id']}/cancel")
    assert reply.status == 202 and reply.body["cancel_requested"] is True
    done = await client.wait_state(job["id"], TERMINAL, timeout=15)
    assert done["state"] == "cancelled"
    attempts = (await client.get(f"/tasks/{job['id']}/attempts")).body["items"]
    assert [a["outcome"] for a in attempts] == ["cancelled"]
    late = await client.post(f"/tasks/{job['id']}/cancel")
    assert late.status == 200  # already cancelled: nothing to do


async def test_retry_of_failed_job_runs_it_again(client: Client):
    job = (await client.post("/tasks", json={"task": "fail", "payload": {"times": 1},
                                             "max_attempts": 1})).body
    failed = await client.wait_state(job["id"], TERMINAL)
    assert failed["state"] == "failed" and "failed on purpose" in failed["error"]
    reply = await client.post(f"/tasks/{job['id']}/retry")
    assert reply.status == 200 and reply.body["state"] == "queued"
    assert reply.body["max_attempts"] == 2 and reply.body["error"] is None
    done = await client.wait_state(job["id"], TERMINAL)
    assert done["state"] == "succeeded"
    assert done["result"] == {"succeeded_on_attempt": 2}
    attempts = (await client.get(f"/tasks/{job['id']}/attempts")).body["items"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    # A succeeded job can be neither retried nor cancelled.
    assert (await client.post(f"/tasks/{job['id']}/retry")).status == 409
    conflict = await client.post(f"/tasks/{job['id']}/cancel")
    assert conflict.status == 409 and "succeeded" in conflict.body["detail"]


async def test_retry_of_cancelled_job(client: Client):
    job = (await client.post("/tasks", json={"task": "echo", "delay": 600})).body
    assert (await client.post(f"/tasks/{job['id']}/cancel")).status == 200
    reply = await client.post(f"/tasks/{job['id']}/retry")
    assert reply.status == 200 and reply.body["state"] == "queued"
    assert (await client.wait_state(job["id"], TERMINAL))["state"] == "succeeded"


async def test_probes_and_metrics(client: Client):
    anonymous = client.with_token(None)
    assert (await anonymous.get("/healthz")).body == {"status": "ok", "postgres": None,
                                                       "redis": None}
    ready = await anonymous.get("/readyz")
    assert ready.status == 200 and ready.body["postgres"] == "ok" and ready.body["redis"] == "ok"
    assert (await client.post("/tasks", json={"task": "noop", "queue": "metered"})).status == 201
    metrics = await anonymous.get("/metrics")
    assert metrics.status == 200
    assert 'taskflow_jobs_submitted_total{queue="metered"} 1.0' in metrics.body
    assert ('taskflow_api_request_duration_seconds_count{method="POST",route="/tasks",'
            'status="2xx"}') in metrics.body
    # ... answered by the fast path in front of Litestar (api.fast_submit), not the route.
    served = re.search(r'^taskflow_api_fast_submits_total\{outcome="served"\} (\S+)$',
                       metrics.body, re.MULTILINE)
    assert served and float(served.group(1)) >= 1
    schema = await anonymous.get("/schema/openapi.json")
    assert schema.status == 200 and "/tasks/batch" in schema.body["paths"]
    docs = await anonymous.get("/schema/swagger")
    assert docs.status == 200 and "swagger" in docs.body.lower()
