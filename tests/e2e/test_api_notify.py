"""Dead letters, subscriptions and per-job notifications over HTTP, against ``taskflow
serve`` and ``taskflow work`` as processes (no notifier here: deliveries stay pending)."""

from __future__ import annotations

import uuid

import pytest

from taskflow.api.scopes import READ, SUBSCRIPTIONS, WRITE
from tests.e2e.api_stack import Client, token

pytestmark = pytest.mark.slow

PUBLIC_HOOK = "https://93.184.216.34/hooks/taskflow"  # a public address: passes the guard


def fail(queue: str = "default", message: str = "boom", **job) -> dict:
    return {"task": "fail", "queue": queue, "max_attempts": 1,
            "payload": {"message": message}, **job}


async def failed_jobs(client: Client, *specs: dict) -> list[str]:
    reply = await client.post("/tasks/batch", json={"tasks": list(specs)})
    assert reply.status == 201, reply
    ids = reply.body["ids"]
    for job_id in ids:
        await client.wait_state(job_id, {"failed"})
    return ids


def subscriber(client: Client, tenant: str) -> Client:
    return client.with_token(token(tenant, [READ, WRITE, SUBSCRIPTIONS]))


@pytest.mark.parametrize("notify, field", [
    ({"webhook": "http://127.0.0.1:9/hook"}, "notify.webhook"),
    ({"webhook": "http://10.1.2.3/hook"}, "notify.webhook"),
    ({"webhook": "https://no-such-host.invalid/hook"}, "notify.webhook"),
    ({"webhook": "ftp://example.com/x"}, "notify.webhook"),
    ({"webhook": "https://user:pw@93.184.216.34/x"}, "notify.webhook"),
    ({"email": ["not-an-address"]}, "notify.email[0]"),
    ({"email": ["a@example.com, b@example.com"]}, "notify.email[0]"),
    ({"on": ["exploded"], "email": ["a@example.com"]}, "notify.on[0]"),
    ({"on": [], "email": ["a@example.com"]}, "notify.on"),
    ({"on": ["failed"]}, "notify"),
    ({"webhook": PUBLIC_HOOK, "sms": "+1555"}, "notify"),
])
async def test_bad_notify_is_a_422_naming_the_field(client: Client, notify, field):
    reply = await client.post("/tasks", json={"task": "noop", "notify": notify})
    assert reply.status == 422, reply
    assert reply.body["field"].startswith(field), reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")


async def test_bad_notify_in_a_batch_and_a_workflow_names_its_index(client: Client):
    reply = await client.post("/tasks/batch", json={"tasks": [
        {"task": "noop"}, {"task": "noop", "notify": {"webhook": "http://192.168.0.1/"}}]})
    assert (reply.status, reply.body["field"]) == (422, "tasks[1].notify.webhook"), reply
    reply = await client.post("/workflows", json={"name": "w", "jobs": [
        {"name": "a", "task": "noop", "notify": {"webhook": "http://[::1]/x"}}]})
    assert (reply.status, reply.body["field"]) == (422, "jobs[0].notify.webhook"), reply


async def test_job_notify_is_kept_and_its_deliveries_are_listed(client: Client, tenant):
    notify = {"on": ["failed", "succeeded"], "webhook": PUBLIC_HOOK,
              "email": ["ops@example.com", "dev@example.com"]}
    reply = await client.post("/tasks", json={**fail(), "notify": notify})
    assert reply.status == 201, reply
    assert reply.body["notify"] == notify
    job_id = reply.body["id"]
    await client.wait_state(job_id, {"failed"})
    reply = await client.get(f"/tasks/{job_id}/notifications")
    assert reply.status == 200, reply
    got = sorted((n["event"], n["channel"], n["target"], n["status"])
                 for n in reply.body["items"])
    assert got == [("job.failed", "email", "ops@example.com,dev@example.com", "pending"),
                   ("job.failed", "webhook", PUBLIC_HOOK, "pending")]
    other = client.with_token(token(f"other-{uuid.uuid4().hex[:6]}"))
    assert (await other.get(f"/tasks/{job_id}/notifications")).status == 404


async def test_subscriptions_crud_and_tenant_isolation(client: Client, tenant):
    subs = subscriber(client, tenant)
    assert (await client.post("/subscriptions", json={
        "events": ["job.failed"], "webhook": PUBLIC_HOOK})).status == 403
    reply = await subs.post("/subscriptions", json={
        "events": ["job.failed", "workflow.failed"], "queue": "q1",
        "webhook": PUBLIC_HOOK})
    assert reply.status == 201, reply
    created = reply.body
    assert created["secret"].startswith("whsec_") and created["queue"] == "q1"
    reply = await subs.post("/subscriptions", json={"events": ["job.succeeded"],
                                                    "email": ["a@example.com"]})
    assert reply.status == 201, reply
    listed = await subs.get("/subscriptions", params={"limit": "1"})
    assert listed.status == 200 and len(listed.body["items"]) == 1
    assert "secret" not in listed.body["items"][0]
    rest = await subs.get("/subscriptions", params={"cursor": listed.body["next_cursor"]})
    assert len(rest.body["items"]) == 1 and rest.body["next_cursor"] is None
    stranger = subscriber(client, f"other-{uuid.uuid4().hex[:6]}")
    assert (await stranger.call("DELETE", f"/subscriptions/{created['id']}")).status == 404
    assert (await stranger.get("/subscriptions")).body["items"] == []
    assert (await subs.call("DELETE", f"/subscriptions/{created['id']}")).status == 204
    assert (await subs.call("DELETE", f"/subscriptions/{created['id']}")).status == 404


@pytest.mark.parametrize("body, field", [
    ({"events": ["job.exploded"], "webhook": PUBLIC_HOOK}, "events[0]"),
    ({"events": [], "webhook": PUBLIC_HOOK}, "events"),
    ({"events": ["job.failed"], "webhook": "http://127.0.0.1/x"}, "webhook"),
    ({"events": ["job.failed"], "webhook": "https://nowhere.invalid/x"}, "webhook"),
    ({"events": ["job.failed"], "email": ["nobody"]}, "email[0]"),
    ({"events": ["job.failed"]}, "(body)"),
    ({"events": ["job.failed"], "webhook": PUBLIC_HOOK, "email": ["a@example.com"]},
     "(body)"),
    ({"events": ["job.failed"], "queue": "bad queue!", "webhook": PUBLIC_HOOK}, "queue"),
    # Undeclared: no job could be in it, so the subscription would never fire.
    ({"events": ["job.failed"], "queue": "nowhere", "webhook": PUBLIC_HOOK}, "queue"),
])
async def test_bad_subscription_is_a_422_naming_the_field(client: Client, tenant, body, field):
    reply = await subscriber(client, tenant).post("/subscriptions", json=body)
    assert reply.status == 422, reply
    assert (reply.body.get("field") or "(body)") == field, reply.body


async def test_webhook_secret_is_stable_until_rotated(client: Client, tenant):
    subs = subscriber(client, tenant)
    first = (await subs.get("/subscriptions/webhook-secret")).body["secret"]
    assert first.startswith("whsec_")
    assert (await subs.get("/subscriptions/webhook-secret")).body["secret"] == first
    rotated = await subs.post("/subscriptions/webhook-secret/rotate")
    assert rotated.status == 200 and rotated.body["secret"] not in (first, None)
    assert (await client.get("/subscriptions/webhook-secret")).status == 403


async def test_dead_letters_list_filters_and_pages(client: Client):
    # The stack's worker serves the default queue only: filters tell jobs apart by error.
    declined = await failed_jobs(client, fail(message="card declined"))
    bank = await failed_jobs(client, fail(message="timeout talking to bank"))
    declined += await failed_jobs(client, fail(message="card declined again"))
    ok = await client.post("/tasks", json={"task": "noop"})
    await client.wait_state(ok.body["id"], {"succeeded"})
    everything = await client.get("/dead-letters")
    assert everything.status == 200, everything
    assert [j["id"] for j in everything.body["items"]] == [declined[1], bank[0], declined[0]]
    assert (await client.get("/dead-letters", params={"queue": "default"})).body == \
        everything.body
    assert (await client.get("/dead-letters", params={"queue": "elsewhere"})).body[
        "items"] == []
    assert (await client.get("/dead-letters", params={"task": "noop"})).body["items"] == []
    by_error = await client.get("/dead-letters", params={"error": "card declined"})
    assert [j["id"] for j in by_error.body["items"]] == declined[::-1]
    page = await client.get("/dead-letters", params={"limit": "2"})
    assert len(page.body["items"]) == 2 and page.body["next_cursor"]
    rest = await client.get("/dead-letters", params={"limit": "2",
                                                     "cursor": page.body["next_cursor"]})
    assert [j["id"] for j in rest.body["items"]] == [declined[0]]
    assert rest.body["next_cursor"] is None
    future = await client.get("/dead-letters", params={"failed_after": "2999-01-01T00:00:00Z"})
    assert future.body["items"] == []
    past = await client.get("/dead-letters", params={"failed_before": "2000-01-01T00:00:00Z"})
    assert past.body["items"] == []
    bad = await client.get("/dead-letters", params={"failed_before": "yesterday"})
    assert (bad.status, bad.body["field"]) == (422, "failed_before")


async def test_redrive_by_ids_gives_a_fresh_budget_and_keeps_history(client: Client):
    [job_id] = await failed_jobs(client, fail(max_attempts=2))
    ok = (await client.post("/tasks", json={"task": "noop"})).body["id"]
    await client.wait_state(ok, {"succeeded"})
    dry = await client.post("/dead-letters/redrive",
                            json={"ids": [job_id, ok, str(uuid.uuid4())], "dry_run": True})
    assert dry.status == 200, dry
    assert dry.body == {"matched": 1, "redriven": 0, "ids": [job_id]}
    assert (await client.get(f"/tasks/{job_id}")).body["state"] == "failed"
    reply = await client.post("/dead-letters/redrive", json={"ids": [job_id, ok]})
    assert reply.body == {"matched": 1, "redriven": 1, "ids": [job_id]}
    job = await client.wait_state(job_id, {"failed"})
    assert (job["attempts"], job["max_attempts"]) == (4, 4)
    attempts = (await client.get(f"/tasks/{job_id}/attempts")).body["items"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    again = await client.post("/dead-letters/redrive", json={"ids": [ok]})
    assert again.body == {"matched": 0, "redriven": 0, "ids": []}


async def test_redrive_by_filter_respects_the_limit(client: Client):
    ids = await failed_jobs(client, *[fail(message="flaky dependency") for _ in range(5)])
    reply = await client.post("/dead-letters/redrive", json={
        "filter": {"queue": "default", "error": "flaky dependency"}, "limit": 3})
    assert reply.status == 200, reply
    assert reply.body["matched"] == 3 and reply.body["redriven"] == 3
    assert reply.body["ids"] == sorted(ids, reverse=True)[:3]  # newest (highest id) first
    for job_id in reply.body["ids"]:
        job = await client.wait_state(job_id, {"failed"})
        assert job["attempts"] == 2
    [left, *_] = sorted(set(ids) - set(reply.body["ids"]))
    untouched = (await client.get(f"/tasks/{left}")).body
    assert (untouched["state"], untouched["attempts"]) == ("failed", 1)


@pytest.mark.parametrize("body, field", [
    ({}, "(body)"),
    ({"ids": [], "dry_run": True}, "ids"),
    ({"ids": ["nope"]}, "ids[0]"),
    ({"filter": {"queue": "q"}, "limit": 0}, "limit"),
    ({"filter": {"queue": "q"}, "limit": 100001}, "limit"),
    ({"filter": {"failed_after": "2020-01-01"}}, "filter.failed_after"),
    ({"filter": {"colour": "red"}}, "filter"),
    ({"ids": [str(uuid.uuid4())], "filter": {}}, "(body)"),
])
async def test_bad_redrive_is_a_422_naming_the_field(client: Client, body, field):
    reply = await client.post("/dead-letters/redrive", json=body)
    assert reply.status == 422, reply
    assert (reply.body.get("field") or "(body)").startswith(field), reply.body


async def test_dead_letters_need_scopes(client: Client, tenant):
    reader = client.with_token(token(tenant, [READ]))
    assert (await reader.get("/dead-letters")).status == 200
    assert (await reader.post("/dead-letters/redrive", json={"ids": [str(uuid.uuid4())]})
            ).status == 403
