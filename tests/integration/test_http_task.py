"""The built-in http task against a real HTTP server on loopback."""

from __future__ import annotations

import msgspec
import pytest
from aiohttp import web

from taskflow.adapters.embedded import free_port
from taskflow.states import JobState
from tests.conftest import make_settings
from tests.helpers import running_worker, submit_jobs, wait_for_states

DONE = {"succeeded", "failed"}
# 127.0.0.1 as the socket layer also reads it.
NUMERIC_LOOPBACK = ["127.1", "2130706433", "0x7f.1", "0177.0.0.1", "[::ffff:127.0.0.1]"]


@pytest.fixture
async def server():
    calls: dict[str, int] = {}

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        calls[name] = calls.get(name, 0) + 1
        if name == "ok":
            body = await request.json() if request.can_read_body else None
            return web.json_response({"method": request.method, "got": body,
                                      "header": request.headers.get("X-Test")})
        if name == "flaky":  # 503 once, then fine
            return web.Response(status=503 if calls[name] == 1 else 200, text="flaky")
        if name == "missing":
            return web.Response(status=404, text="no such thing")
        if name == "busy":
            return web.Response(status=429, headers={"Retry-After": "0"}, text="slow down")
        if name == "busy-odd":  # a digit int() and float() refuse
            return web.Response(status=429, headers={"Retry-After": "\u00b2"}, text="wait")
        if name == "redirect":
            raise web.HTTPFound("http://127.0.0.1:1/elsewhere")
        return web.Response(status=500)

    app = web.Application()
    app.router.add_route("*", "/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", calls
    await runner.cleanup()


async def test_http_task_statuses(stores, settings, server):
    base, calls = server
    ids = await submit_jobs(
        stores,
        {"task": "http", "payload": {"url": f"{base}/ok", "method": "POST",
                                     "body": {"a": 1}, "headers": {"X-Test": "yes"}}},
        {"task": "http", "payload": {"url": f"{base}/flaky"}},
        {"task": "http", "payload": {"url": f"{base}/missing"}, "max_attempts": 5},
        {"task": "http", "payload": {"url": f"{base}/busy"}, "max_attempts": 2},
        {"task": "http", "payload": {"url": f"{base}/redirect"}, "max_attempts": 5},
        {"task": "http", "payload": {"url": "http://127.0.0.1:1/refused"}, "max_attempts": 2},
        {"task": "http", "payload": {"url": "ftp://example.com/x"}, "max_attempts": 5},
        {"task": "http", "payload": {"url": f"{base}/busy-odd"}, "max_attempts": 2},
    )
    async with running_worker(stores, settings):
        jobs = await wait_for_states(stores, ids, DONE, timeout=20)
    ok, flaky, missing, busy, redirect, refused, ftp, odd = jobs_in_order(jobs, ids)
    assert ok.state is JobState.SUCCEEDED
    assert msgspec.json.decode(ok.result["body"]) == {"method": "POST", "got": {"a": 1},
                                                      "header": "yes"}
    assert flaky.state is JobState.SUCCEEDED and flaky.attempts == 2
    assert missing.state is JobState.FAILED and missing.attempts == 1  # 4xx: no retry
    assert "answered 404" in missing.error
    assert busy.state is JobState.FAILED and busy.attempts == 2 and calls["busy"] == 2
    assert redirect.state is JobState.FAILED and redirect.attempts == 1  # not followed
    assert refused.state is JobState.FAILED and refused.attempts == 2  # connection: retried
    assert "ConnectionError" in refused.error
    assert ftp.state is JobState.FAILED and "http(s) URL" in ftp.error
    # An unreadable Retry-After is a 429 like any other: retried, and said as such.
    assert odd.state is JobState.FAILED and odd.attempts == 2 and "answered 429" in odd.error


async def test_http_task_cannot_reach_internal_addresses_unless_allowed(
        stores, servers, server):
    base, calls = server
    locked = make_settings(servers, outbound={"allowed_networks": []})
    hosts = ["127.0.0.1", "localhost", *NUMERIC_LOOPBACK, "0", "[::ffff:0:127.0.0.1]"]
    ids = await submit_jobs(stores, *(
        {"task": "http", "payload": {"url": base.replace("127.0.0.1", host) + "/ok"},
         "max_attempts": 3} for host in hosts))
    async with running_worker(stores, locked):
        jobs = await wait_for_states(stores, ids, DONE, timeout=20)
    for job in jobs:
        assert job.state is JobState.FAILED and job.attempts == 1
        assert "may not reach" in job.error
    assert "ok" not in calls


async def test_http_task_reaches_numeric_forms_of_an_allowed_address(stores, settings, server):
    base, calls = server  # settings allow 127.0.0.0/8
    ids = await submit_jobs(stores, *(
        {"task": "http", "payload": {"url": base.replace("127.0.0.1", host) + "/ok"},
         "max_attempts": 1} for host in NUMERIC_LOOPBACK))
    async with running_worker(stores, settings):
        jobs = await wait_for_states(stores, ids, DONE, timeout=20)
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * len(ids), [j.error for j in jobs]
    assert calls["ok"] == len(ids)


def jobs_in_order(jobs, ids):
    by_id = {j.id: j for j in jobs}
    return [by_id[i] for i in ids]
