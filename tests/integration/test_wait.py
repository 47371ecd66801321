"""Waiting for outcomes over HTTP (issue 11): ``wait=`` on GET and POST, and the event
streams, against real PostgreSQL and Redis, a real worker and the app in this event loop
(its lifespan runs, so the change feed subscribes as in ``taskflow serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import msgspec
import pytest

from taskflow.api.app import create_app
from taskflow.api.server import asgi_app
from tests.helpers import running_worker, wait_until

SECRET = "s" * 32


def _headers(tenant: str = "t") -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode(
        {"tenant": tenant, "scope": "tasks:read tasks:write", "sub": "x",
         "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")}


@contextlib.asynccontextmanager
async def _api(stores, settings, fast: bool = True,
               **api) -> AsyncIterator[tuple[httpx.AsyncClient, object, object]]:
    """A client of the app as ``taskflow serve`` runs it: behind the ``POST /tasks`` fast
    path, or (``fast=False``) the Litestar app alone."""
    cfg = msgspec.structs.replace(settings, jwt_secret=SECRET,
                                  api=msgspec.structs.replace(settings.api, **api))
    app = create_app(cfg, stores)
    async with app.lifespan():
        feed = app.state.api.feed
        # Subscribed: the first (re)subscription wakes nobody, there is nobody yet.
        await wait_until(lambda: _subscribed(stores, feed.channel))
        transport = httpx.ASGITransport(app=asgi_app(app) if fast else app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                     headers=_headers(), timeout=30) as client:
            yield client, feed, app


async def _subscribed(stores, channel: str) -> bool:
    counts = await stores.dispatch.client.pubsub_numsub(channel)
    return bool(counts and counts[0][1] >= 1)


async def _submit(client: httpx.AsyncClient, **spec) -> str:
    answer = await client.post("/tasks", json={"max_attempts": 1, **spec})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _served_fast(app) -> float:
    """POST /tasks the fast path answered so far."""
    return app.state.api.metrics.registry.get_sample_value(
        "taskflow_api_fast_submits_total", {"outcome": "served"}) or 0.0


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "route"])
async def test_post_with_wait_answers_with_the_outcome(stores, settings, fast):
    async with (_api(stores, settings, fast) as (client, feed, app),
                running_worker(stores, settings)):
        answer = await client.post("/tasks?wait=20",
                                   json={"task": "echo", "payload": {"x": 1}})
        assert answer.status_code == 201, answer.text
        assert answer.json()["state"] == "succeeded"
        assert answer.json()["result"] == {"x": 1}
        # An idempotent replay waits too, and answers 200 with the ended job.
        spec = {"task": "sleep", "payload": {"seconds": 0.2}, "idempotency_key": "k"}
        first = await client.post("/tasks", json=spec)
        replay = await client.post("/tasks?wait=20", json=spec)
        assert (first.status_code, replay.status_code) == (201, 200)
        assert replay.json()["id"] == first.json()["id"]
        assert replay.json()["state"] == "succeeded"
        # POST ?wait= answers at S with the job as it is then.
        answer = await client.post("/tasks?wait=0.3",
                                   json={"task": "sleep", "payload": {"seconds": 5}})
        assert answer.status_code == 201 and answer.json()["state"] in ("queued", "running")
        assert _served_fast(app) == (4 if fast else 0)
    assert len(feed) == 0


async def test_get_with_wait_answers_when_the_job_ends(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        job_id = await _submit(client, task="noop")
        waiting = asyncio.create_task(client.get(f"/tasks/{job_id}?wait=30"))
        await wait_until(lambda: asyncio.sleep(0, len(feed) == 1))
        began = time.monotonic()
        async with running_worker(stores, settings):
            answer = await waiting
        assert answer.status_code == 200 and answer.json()["state"] == "succeeded"
        assert time.monotonic() - began < 25  # woken by the worker's flush, not by S
        # Ended already: answers at once.
        began = time.monotonic()
        again = await client.get(f"/tasks/{job_id}?wait=30")
        assert again.json()["state"] == "succeeded" and time.monotonic() - began < 5


async def test_get_with_wait_answers_the_current_state_after_s(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        job_id = await _submit(client, task="noop")  # no worker: it stays queued
        began = time.monotonic()
        answer = await client.get(f"/tasks/{job_id}?wait=0.3")
        assert answer.status_code == 200 and answer.json()["state"] == "queued"
        assert time.monotonic() - began >= 0.3
        assert len(feed) == 0


async def test_a_lost_notification_costs_at_most_s(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        job_id = await _submit(client, task="noop")
        waiting = asyncio.create_task(client.get(f"/tasks/{job_id}?wait=1.5"))
        await wait_until(lambda: asyncio.sleep(0, len(feed) == 1))
        # Ended in PostgreSQL with no message on the channel (as if Redis lost it).
        await stores.store.pool.execute(
            "UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1", job_id)
        answer = await waiting
        assert answer.json()["state"] == "succeeded"


async def test_a_resubscription_wakes_every_waiter(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        job_id = await _submit(client, task="noop")
        waiting = asyncio.create_task(client.get(f"/tasks/{job_id}?wait=30"))
        await wait_until(lambda: asyncio.sleep(0, len(feed) == 1))
        await stores.store.pool.execute(
            "UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1", job_id)
        # Redis drops the subscriber (a restart would): messages may have been lost, so
        # the feed wakes its waiters when it subscribes again.
        await stores.dispatch.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        answer = await asyncio.wait_for(waiting, 20)
        assert answer.json()["state"] == "succeeded"


async def test_another_tenants_job_is_404_before_any_wait(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        job_id = await _submit(client, task="noop")
        created = await client.post("/workflows", json={"name": "w", "jobs": [
            {"name": "a", "task": "noop"}]})
        workflow_id = created.json()["id"]
        other = _headers("other")
        began = time.monotonic()
        for path in (f"/tasks/{job_id}?wait=30", f"/tasks/{job_id}/events",
                     f"/workflows/{workflow_id}?wait=30", f"/workflows/{workflow_id}/events"):
            answer = await client.get(path, headers=other)
            assert answer.status_code == 404, answer.text
        assert time.monotonic() - began < 5
        assert len(feed) == 0


@pytest.mark.parametrize("value", ["0", "-1", "61", "nan", "inf", "soon"])
async def test_a_bad_wait_is_a_422_naming_it(stores, settings, value):
    async with _api(stores, settings) as (client, _, _):
        job_id = await _submit(client, task="noop")
        for answer in (await client.get(f"/tasks/{job_id}?wait={value}"),
                       await client.post(f"/tasks?wait={value}", json={"task": "noop"})):
            assert answer.status_code in (400, 422), answer.text
            assert answer.json().get("field") == "wait", answer.text


async def test_a_client_that_goes_away_is_dropped_at_once(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        job_id = await _submit(client, task="noop")
        waiting = [asyncio.create_task(client.get(f"/tasks/{job_id}?wait=30")),
                   asyncio.create_task(client.get(f"/tasks/{job_id}/events"))]
        await wait_until(lambda: asyncio.sleep(0, len(feed) == 2))
        for task in waiting:
            task.cancel()  # the client hangs up
        await asyncio.gather(*waiting, return_exceptions=True)
        assert len(feed) == 0


def _events(text: str) -> list[dict]:
    """The events of an SSE body (comment lines skipped)."""
    found = []
    for block in text.split("\r\n\r\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "id" in fields:
            found.append({"id": fields["id"], "event": fields["event"],
                          "data": msgspec.json.decode(fields["data"])})
    return found


async def test_events_arrive_in_order_and_resume_without_gaps(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        job_id = await _submit(client, task="fail", max_attempts=3, payload={"times": 2})
        stream = asyncio.create_task(client.get(f"/tasks/{job_id}/events"))
        await wait_until(lambda: asyncio.sleep(0, len(feed) == 1))
        async with running_worker(stores, settings):
            answer = await asyncio.wait_for(stream, 30)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = _events(answer.text)
        states = [e["event"] for e in events]
        # Every change, in order: the first state, then per attempt its start and what
        # followed it (a retry, then success on the third).
        assert states == ["queued", "running", "scheduled", "running", "scheduled", "running",
                          "succeeded"], states
        ids = [tuple(map(int, e["id"].split("."))) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert events[2]["data"]["error"] and events[-1]["data"]["result"]
        # Derived from PostgreSQL: a new stream replays the same events, and one resumed
        # from any of them sends exactly the rest.
        replay = _events((await client.get(f"/tasks/{job_id}/events")).text)
        assert replay == events
        for i, event in enumerate(events):
            rest = await client.get(f"/tasks/{job_id}/events",
                                    headers={"Last-Event-ID": event["id"]})
            assert _events(rest.text) == events[i + 1:]
        # "\xb2" is "²" as a header's Latin-1: a digit to str.isdigit(), not to int().
        for value in ("x", b"\xb2.1", b"1.\xb3"):
            bad = await client.get(f"/tasks/{job_id}/events", headers={"Last-Event-ID": value})
            assert bad.status_code == 422 and bad.json()["field"] == "Last-Event-ID", value
    assert len(feed) == 0


async def test_waiters_on_jobs_a_cancel_ends_with_it_answer_at_once(stores, settings):
    # No worker: nothing but the cancels ends these jobs. Each waiter waits up to 20 s.
    async with _api(stores, settings) as (client, feed, _):
        upstream = await _submit(client, task="noop", delay=120)
        dependent = await _submit(client, task="noop", depends_on=[upstream])
        created = await client.post("/workflows", json={"name": "w", "jobs": [
            {"name": "a", "task": "noop", "delay": 120},
            {"name": "b", "task": "noop", "after": ["a"]}]})
        assert created.status_code == 201, created.text
        members = created.json()["jobs"]
        outside = await _submit(client, task="noop", depends_on=[members["b"]])
        ids = [dependent, members["a"], members["b"], outside]
        waiting = [asyncio.create_task(client.get(f"/tasks/{i}?wait=20")) for i in ids]
        await wait_until(lambda: asyncio.sleep(0, len(feed) == len(ids)))
        began = time.monotonic()
        assert (await client.post(f"/tasks/{upstream}/cancel")).status_code == 200
        workflow_id = created.json()["id"]
        assert (await client.post(f"/workflows/{workflow_id}/cancel")).status_code == 200
        answers = await asyncio.gather(*waiting)
        # Told by the cancels' messages: the dependent cancelled with its upstream, the
        # workflow's scheduled and blocked members, and a job outside it that waited on
        # one of them.
        assert [a.json()["state"] for a in answers] == ["cancelled"] * len(ids)
        assert time.monotonic() - began < 10
    assert len(feed) == 0


async def test_workflow_wait_and_events(stores, settings):
    async with _api(stores, settings) as (client, feed, _):
        created = await client.post("/workflows", json={"name": "w", "jobs": [
            {"name": "a", "task": "noop"}, {"name": "b", "task": "noop", "after": ["a"]}]})
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
        early = await client.get(f"/workflows/{workflow_id}?wait=0.2")
        assert early.json()["state"] == "running"
        waiting = asyncio.create_task(client.get(f"/workflows/{workflow_id}?wait=30"))
        stream = asyncio.create_task(client.get(f"/workflows/{workflow_id}/events"))
        await wait_until(lambda: asyncio.sleep(0, len(feed) == 2))
        async with running_worker(stores, settings):
            answer = await asyncio.wait_for(waiting, 30)
            events = _events((await asyncio.wait_for(stream, 30)).text)
        assert answer.json()["state"] == "succeeded"
        assert events[0]["event"] == "running" and events[-1]["event"] == "succeeded"
        assert events[-1]["data"] == answer.json()
        resumed = await client.get(f"/workflows/{workflow_id}/events",
                                   headers={"Last-Event-ID": events[-1]["id"]})
        assert _events(resumed.text) == []
    assert len(feed) == 0


async def test_an_idle_stream_gets_comment_heartbeats_and_ends_after_its_lifetime(
        stores, settings):
    async with _api(stores, settings, events_heartbeat=0.2, events_max_seconds=1.0) as (
            client, feed, _):
        job_id = await _submit(client, task="noop")  # no worker: it stays queued
        answer = await client.get(f"/tasks/{job_id}/events")
        blocks = [b for b in answer.text.split("\r\n\r\n") if b]
        assert [e["event"] for e in _events(answer.text)] == ["queued"]
        assert "retry: 1000" in blocks[0]  # the reconnection delay, on the first event
        beats = blocks[1:]
        assert beats and all(b == ": keep-alive" for b in beats), beats
        # Ended by its lifetime: resuming sends nothing new (the job has not changed).
        last = _events(answer.text)[-1]["id"]
        resumed = await client.get(f"/tasks/{job_id}/events", headers={"Last-Event-ID": last})
        assert _events(resumed.text) == []
    assert len(feed) == 0


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "route"])
async def test_post_with_wait_answers_the_created_job_when_the_wait_fails(
        stores, settings, monkeypatch, fast):
    # A read of the waited job that failed after the commit (PostgreSQL slower than
    # api.backend_timeout) was answered 503 "retry": the client submits again, and
    # there are two jobs.
    real = stores.store.get_jobs

    async def slow(ids):
        await stores.store.pool.execute("SELECT pg_sleep(2)")
        return await real(ids)

    async with _api(stores, settings, fast, backend_timeout=0.5) as (client, feed, app):
        monkeypatch.setattr(stores.store, "get_jobs", slow)
        answer = await client.post("/tasks?wait=5", json={"task": "noop"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["state"] == "queued"
        assert _served_fast(app) == (1 if fast else 0)
    assert await stores.store.pool.fetchval("SELECT count(*) FROM jobs") == 1
    assert len(feed) == 0
