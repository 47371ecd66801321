"""An API process told to stop (``run_api``'s stop event, as SIGTERM sets it) while
clients wait on it: every wait answers the state as it is and every event stream ends,
well within the graceful shutdown, behind a real uvicorn."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import msgspec

from taskflow.api.app import create_app
from taskflow.api.server import GRACEFUL_SHUTDOWN, bind, run_api, url_of
from tests.helpers import wait_until

SECRET = "s" * 32


async def test_stopping_answers_waits_and_ends_streams_at_once(stores, settings):
    cfg = msgspec.structs.replace(settings, jwt_secret=SECRET)
    app = create_app(cfg, stores)
    feed = app.state.api.feed
    sock = bind("127.0.0.1", 0)
    base = url_of(sock)
    stop = asyncio.Event()
    server = asyncio.create_task(run_api(app, sock, stop))
    token = jwt.encode({"tenant": "t", "scope": "tasks:read tasks:write", "sub": "x",
                        "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    try:
        async with aiohttp.ClientSession(
                base, headers={"Authorization": f"Bearer {token}"}) as http:
            await wait_until(lambda: _answers(http))
            # No worker: nothing ends these jobs, so each request below waits 30 s.
            async with http.post("/tasks", json={"task": "noop"}) as r:
                job_id = (await r.json())["id"]
            async with http.post("/workflows", json={"name": "w", "jobs": [
                    {"name": "a", "task": "noop"}]}) as r:
                workflow_id = (await r.json())["id"]

            async def call(method: str, path: str, **kw) -> tuple[int, bytes]:
                async with http.request(method, path, **kw) as r:
                    return r.status, await r.read()  # raises if the body is cut short

            requests = [
                asyncio.create_task(call("GET", f"/tasks/{job_id}?wait=30")),
                asyncio.create_task(call("POST", "/tasks?wait=30", json={"task": "noop"})),
                asyncio.create_task(call("GET", f"/workflows/{workflow_id}?wait=30")),
                asyncio.create_task(call("GET", f"/tasks/{job_id}/events")),
                asyncio.create_task(call("GET", f"/workflows/{workflow_id}/events")),
            ]
            await wait_until(lambda: asyncio.sleep(0, len(feed) == len(requests)))
            began = time.monotonic()
            stop.set()
            answers = await asyncio.wait_for(asyncio.gather(*requests), GRACEFUL_SHUTDOWN)
            await asyncio.wait_for(server, GRACEFUL_SHUTDOWN)
            assert time.monotonic() - began < GRACEFUL_SHUTDOWN / 2
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
        sock.close()
    (got, waited), (posted, created), (wf, view), (s1, job_events), (s2, wf_events) = answers
    assert got == 200 and msgspec.json.decode(waited)["state"] == "queued"
    # The job it created, as it stands: its client knows not to submit it again.
    assert posted == 201
    created_id = msgspec.json.decode(created)["id"]
    assert (await stores.store.get_jobs([created_id]))[0].state.value == "queued"
    assert wf == 200 and msgspec.json.decode(view)["state"] == "running"
    # The streams ended cleanly after what they had to say (their clients resume with
    # Last-Event-ID elsewhere).
    assert s1 == 200 and b"event: queued" in job_events
    assert s2 == 200 and b"event: running" in wf_events


async def _answers(http: aiohttp.ClientSession) -> bool:
    try:
        async with http.get("/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False
