"""The fast path of ``POST /tasks`` (issue 11) answers exactly as the Litestar route does:
the same status, headers and bytes for a created job, a replay and every error, and the
same request metrics. Each test also checks which path answered, so that none passes
because the fast path quietly handed everything to the route."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import jwt
import msgspec
import pytest

from taskflow.api.app import create_app
from taskflow.api.fastpath import FastSubmit, asgi_app
from tests.helpers import wait_until

SECRET = "s" * 32


def _token(scope: str = "tasks:read tasks:write", **claims: Any) -> str:
    body = {"tenant": "t", "scope": scope, "sub": "x", "exp": int(time.time()) + 600,
            **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


class Answer(msgspec.Struct):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def _call(app: Any, body: bytes, *, token: str | None = None, chunks: int = 1,
                content_type: bytes = b"application/json", query: bytes = b"",
                headers: list[tuple[bytes, bytes]] | None = None) -> Answer:
    """One raw ASGI request, as uvicorn would make it (the body in ``chunks`` parts)."""
    if headers is None:
        headers = [(b"host", b"api"), (b"content-type", content_type),
                   (b"content-length", b"%d" % len(body))]
        if token is not None:
            headers.append((b"authorization", b"Bearer " + token.encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/tasks", "raw_path": b"/tasks",
             "query_string": query, "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {}}
    size = -(-len(body) // chunks) or 1
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
                for i, p in enumerate(parts)]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # the client waits for its answer
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert not sent[1].get("more_body", False)
    return Answer(sent[0]["status"], list(sent[0]["headers"]), sent[1]["body"])


_VARYING = re.compile(rb'"(id|run_at|created_at)":"[^"]*"')


def _same_but_ids(a: Answer, b: Answer) -> None:
    """Two answers for two new jobs: equal but for the job's id and times."""
    assert (a.status, a.headers) == (b.status, b.headers)
    assert _VARYING.sub(rb'"\1":"-"', a.body) == _VARYING.sub(rb'"\1":"-"', b.body)


@pytest.fixture
async def apps(stores, settings):
    cfg = msgspec.structs.replace(
        settings, jwt_secret=SECRET,
        api=msgspec.structs.replace(settings.api, max_payload_bytes=1000,
                                    max_body_bytes=5000))
    route = create_app(cfg, stores)
    fast = asgi_app(route)
    assert isinstance(fast, FastSubmit)
    yield route, fast
    await route.state.api.submitter.close()


def _paths(route) -> tuple[float, float]:
    """How many submits the fast path served, and how many it handed to the route."""
    get = route.state.api.metrics.registry.get_sample_value
    return tuple(get("taskflow_api_fast_submits_total", {"outcome": o}) or 0.0
                 for o in ("served", "handed_over"))


def _count(route, status: str) -> float:
    return route.state.api.metrics.registry.get_sample_value(
        "taskflow_api_request_duration_seconds_count",
        {"method": "POST", "route": "/tasks", "status": status}) or 0.0


@pytest.mark.parametrize("chunks", [1, 3])
async def test_a_created_job_is_answered_as_the_route_does(apps, stores, chunks):
    route, fast = apps
    body = (b'{"task": "noop", "payload": {"n": 1, "s": "\\u00e9"}, "priority": 5, '
            b'"labels": {"a": "b"}, "max_attempts": 2, "timeout": 1.5}')
    by_route = await _call(route, body, token=_token(), chunks=chunks)
    before = _count(route, "2xx")
    by_fast = await _call(fast, body, token=_token(), chunks=chunks)
    assert by_fast.status == 201, by_fast.body
    _same_but_ids(by_route, by_fast)
    assert _paths(route) == (1, 0)
    assert _count(route, "2xx") == before + 1  # the same series as the route's
    job_id = uuid.UUID(msgspec.json.decode(by_fast.body)["id"])
    row = await stores.store.get_job(job_id)
    assert row is not None and row.tenant == "t" and row.priority == 5  # durable


async def test_an_idempotent_replay_is_answered_as_the_route_does(apps):
    route, fast = apps
    body = b'{"task": "noop", "idempotency_key": "k-1"}'
    first = await _call(fast, body, token=_token())
    replays = [await _call(route, body, token=_token()), await _call(fast, body, token=_token())]
    assert first.status == 201
    assert replays[0] == replays[1]
    assert replays[0].status == 200
    assert replays[0].body == first.body  # the first job, byte for byte
    assert _paths(route) == (2, 0)


_EXPIRED = _token(exp=int(time.time()) - 3600)


@pytest.mark.parametrize("name, kw, status", [
    ("no token", {"body": b'{"task": "noop"}'}, 401),
    ("bad signature", {"body": b'{"task": "noop"}', "token": _token()[:-4] + "AAAA"}, 401),
    ("expired", {"body": b'{"task": "noop"}', "token": _EXPIRED}, 401),
    ("missing scope", {"body": b'{"task": "noop"}', "token": _token("tasks:read")}, 403),
    ("not JSON", {"body": b'{"task": ', "token": _token()}, 400),
    ("empty body", {"body": b"", "token": _token()}, 400),
    ("wrong type", {"body": b'{"task": "noop", "priority": "5"}', "token": _token()}, 422),
    ("unknown field", {"body": b'{"task": "noop", "colour": 1}', "token": _token()}, 422),
    ("unknown task", {"body": b'{"task": "nope"}', "token": _token()}, 422),
    ("payload too large", {"body": b'{"task": "noop", "payload": "' + b"x" * 1200 + b'"}',
                           "token": _token()}, 413),
    ("body too large", {"body": b'{"task": "noop", "payload": "' + b"x" * 6000 + b'"}',
                        "token": _token()}, 413),
    ("form body", {"body": b"task=noop", "token": _token(),
                   "content_type": b"application/x-www-form-urlencoded"}, 400),
    ("bad wait", {"body": b'{"task": "noop"}', "token": _token(), "query": b"wait=0"}, 422),
    ("wait too long", {"body": b'{"task": "noop"}', "token": _token(), "query": b"wait=61"},
     422),
    ("wait not a number", {"body": b'{"task": "noop"}', "token": _token(),
                           "query": b"wait=soon"}, 422),
])
async def test_refused_requests_are_the_routes_answers(apps, name, kw, status):
    route, fast = apps
    by_route = await _call(route, **kw)
    by_fast = await _call(fast, **kw)
    assert by_route.status == status, by_route.body
    assert by_fast == by_route
    assert _paths(route) == (0, 1)  # handed over, body and all


async def test_an_error_after_the_submit_is_answered_by_the_apps_handlers(apps):
    # An unknown upstream is found by the INSERT: the fast path answers it itself.
    route, fast = apps
    body = b'{"task": "noop", "depends_on": ["%s"]}' % str(uuid.uuid4()).encode()
    before = _count(route, "4xx")
    by_fast = await _call(fast, body, token=_token())
    by_route = await _call(route, body, token=_token())
    assert by_fast.status == 422, by_fast.body
    assert by_fast == by_route
    assert _paths(route) == (1, 0)
    assert _count(route, "4xx") == before + 2


async def test_a_refused_token_is_counted_once(apps):
    from taskflow import metrics

    def failures() -> float:
        found = re.search(rb'^taskflow_api_auth_failures_total\{reason="expired"\} (\S+)$',
                          metrics.page(), re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    route, fast = apps
    before = failures()
    await _call(fast, b'{"task": "noop"}', token=_EXPIRED)
    assert failures() == before + 1


async def test_fast_submit_off_serves_the_route_alone(stores, settings):
    cfg = msgspec.structs.replace(
        settings, jwt_secret=SECRET,
        api=msgspec.structs.replace(settings.api, fast_submit=False))
    route = create_app(cfg, stores)
    assert asgi_app(route) is route


async def test_a_refused_webhook_is_checked_once(apps):
    # A webhook the outbound guard refuses is a 422 from check_targets; the fast path
    # checked it, handed the request over, and the route checked (resolved) it again: up
    # to twice the resolver's timeout for one answer.
    route, fast = apps
    targets = route.state.api.submitter.targets
    checks = []
    webhooks = targets.webhooks

    async def counted(urls):
        checks.append(dict(urls))
        return await webhooks(urls)

    targets.webhooks = counted
    body = b'{"task": "noop", "notify": {"webhook": "http://10.1.2.3/hook"}}'
    by_route = await _call(route, body, token=_token())
    assert by_route.status == 422, by_route.body
    assert len(checks) == 1
    by_fast = await _call(fast, body, token=_token())
    assert by_fast == by_route
    assert len(checks) == 2, f"{len(checks) - 1} checks for the fast path's request"
    assert _paths(route) == (1, 0)  # answered by the fast path, as the route would
    assert _count(route, "4xx") == 2  # the route's and the fast path's, one series


async def test_a_waiting_submit_whose_client_goes_away_is_answered_at_once(apps):
    # Served by the fast path (it waits as the route does), and dropped from the change
    # feed as soon as the client hangs up.
    route, fast = apps
    body = b'{"task": "noop"}'
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/tasks", "raw_path": b"/tasks",
             "query_string": b"wait=30", "root_path": "",
             "headers": [(b"host", b"api"), (b"content-type", b"application/json"),
                         (b"content-length", b"%d" % len(body)),
                         (b"authorization", b"Bearer " + _token().encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": {}}
    feed = route.state.api.feed
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    hung_up = asyncio.Event()

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await hung_up.wait()
        return {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    answering = asyncio.create_task(fast(scope, receive, send))
    await wait_until(lambda: asyncio.sleep(0, len(feed) == 1))  # waiting (no worker)
    began = time.monotonic()
    hung_up.set()
    await asyncio.wait_for(answering, 5)
    assert time.monotonic() - began < 2
    assert sent[0]["status"] == 201
    assert msgspec.json.decode(sent[1]["body"])["state"] == "queued"
    assert len(feed) == 0
    assert _paths(route) == (1, 0)
