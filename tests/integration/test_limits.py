"""What one job may cost (issue 10, items 6 and 7): its result's size, the upstream results
loaded for it, and how many attempts it may ask for."""

from __future__ import annotations

import time

import httpx
import jwt
import msgspec

from taskflow.api.app import create_app
from taskflow.jobs import submit_workflow
from taskflow.models import NewJob, WorkflowNode
from taskflow.worker.registry import Registry
from tests.helpers import running_worker, submit_jobs, wait_for_states


def _limited(settings, **worker):
    return msgspec.structs.replace(
        settings, worker=msgspec.structs.replace(settings.worker, **worker))


async def test_an_oversize_result_fails_its_attempt_for_good(stores, settings):
    registry = Registry()

    @registry.task("big")
    async def big(ctx):
        return "\x01" * ctx.payload["n"]  # six bytes of JSON per character

    cfg = _limited(settings, max_result_bytes=6_000)
    ids = await submit_jobs(stores, {"task": "big", "payload": {"n": 1_200}, "max_attempts": 3},
                            {"task": "big", "payload": {"n": 900}})
    async with running_worker(stores, cfg, registry):
        over, under = await wait_for_states(stores, ids, {"succeeded", "failed"})
    assert over.state.value == "failed" and over.attempts == 1
    assert "7202 bytes as JSON, over the limit of 6000 (worker.max_result_bytes)" in over.error
    assert under.state.value == "succeeded" and under.result == "\x01" * 900


async def test_upstream_results_past_the_budget_are_not_loaded(stores, settings):
    registry = Registry()
    seen: dict[str, dict] = {}

    @registry.task("blob")
    async def blob(ctx):
        return "x" * 600

    @registry.task("join")
    async def join(ctx):
        seen[ctx.payload["name"]] = dict(ctx.upstream_results)
        return len(ctx.upstream_results)

    cfg = _limited(settings, max_upstream_bytes=1_000)
    nodes = [WorkflowNode(name=f"p{i}", job=NewJob(task="blob", max_attempts=1))
             for i in range(3)]
    nodes += [
        WorkflowNode(name="wide", after=("p0", "p1", "p2"),
                     job=NewJob(task="join", max_attempts=3, payload={"name": "wide"})),
        WorkflowNode(name="narrow", after=("p0",),
                     job=NewJob(task="join", max_attempts=1, payload={"name": "narrow"})),
    ]
    _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
    async with running_worker(stores, cfg, registry):
        wide, narrow = await wait_for_states(stores, [ids["wide"], ids["narrow"]],
                                             {"succeeded", "failed"})
    assert wide.state.value == "failed" and wide.attempts == 1  # for good, not retried
    assert "not run: its upstream jobs' results add up to more than 1000 bytes" in wide.error
    assert "wide" not in seen  # its handler never ran
    assert narrow.state.value == "succeeded" and seen["narrow"] == {"p0": "x" * 600}


async def test_max_attempts_is_capped_at_submit(stores, settings):
    cfg = msgspec.structs.replace(settings, jwt_secret="s" * 32)
    headers = {"Authorization": "Bearer " + jwt.encode(
        {"tenant": "t", "scope": "tasks:read tasks:write", "sub": "x",
         "exp": int(time.time()) + 600}, "s" * 32, algorithm="HS256")}
    transport = httpx.ASGITransport(app=create_app(cfg, stores))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        refused = await client.post("/tasks", headers=headers,
                                    json={"task": "noop", "max_attempts": 1000})
        taken = await client.post("/tasks", headers=headers,
                                  json={"task": "noop", "max_attempts": 25})
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "max_attempts"
    assert "at most 25" in refused.json()["detail"]
    assert taken.status_code == 201, taken.text
