"""Waiting over HTTP against the real processes (``taskflow serve`` + ``taskflow work``):
uvicorn tells the API of a client that hangs up, and event streams arrive as they happen."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from tests.e2e.api_stack import Client, token
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


async def _waiters(client: Client) -> float:
    text = (await client.get("/metrics")).body
    return next(float(line.split()[1]) for line in text.splitlines()
                if line.startswith("taskflow_api_waiters "))


async def test_submit_and_wait_in_one_request(client: Client):
    reply = await client.post("/tasks?wait=30", json={"task": "echo", "payload": {"n": 7}})
    assert reply.status == 201, reply
    assert reply.body["state"] == "succeeded" and reply.body["result"] == {"n": 7}


async def test_clients_that_hang_up_are_dropped_at_once(stack, tenant, client: Client):
    parked = await client.post("/tasks", json={"task": "noop", "queue": "parked"})
    job_id = parked.body["id"]  # no worker serves "parked": it stays queued
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    async with aiohttp.ClientSession(headers=headers) as hanging:
        async def wait() -> None:
            async with hanging.get(f"{stack.url}/tasks/{job_id}?wait=60") as r:
                await r.read()

        async def stream() -> None:
            async with hanging.get(f"{stack.url}/tasks/{job_id}/events") as r:
                await r.content.readline()
                await asyncio.sleep(60)

        tasks = [asyncio.create_task(wait()), asyncio.create_task(stream())]
        await wait_until(lambda: _is(client, 2), timeout=20)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # The connections are closed: uvicorn reports the disconnects, the registry empties.
    await wait_until(lambda: _is(client, 0), timeout=10)


async def _is(client: Client, n: int) -> bool:
    return await _waiters(client) == n


async def test_a_stream_shows_a_change_as_it_happens_and_resumes(stack, tenant,
                                                                  client: Client):
    reply = await client.post("/tasks", json={"task": "noop", "queue": "parked"})
    job_id = reply.body["id"]
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    async with aiohttp.ClientSession(headers=headers) as http, \
            http.get(f"{stack.url}/tasks/{job_id}/events") as live:
        assert live.status == 200
        assert live.headers["Content-Type"].startswith("text/event-stream")
        first = await live.content.readuntil(b"\r\n\r\n")
        assert b"event: queued" in first and b"id: 0.1" in first
        # The cancel announces the change: the open stream shows it, then ends.
        cancelled = await client.post(f"/tasks/{job_id}/cancel")
        assert cancelled.status == 200, cancelled
        rest = (await asyncio.wait_for(live.content.read(), 30)).decode()
    assert "event: cancelled" in rest and "id: 0.3" in rest
    # Resuming after the end sends nothing and ends at once.
    async with aiohttp.ClientSession(headers={**headers, "Last-Event-ID": "0.3"}) as http, \
            http.get(f"{stack.url}/tasks/{job_id}/events") as resumed:
        assert (await asyncio.wait_for(resumed.read(), 10)) == b""
