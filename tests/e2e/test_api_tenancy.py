"""Queues shared by tenants, over HTTP against ``taskflow serve`` and ``taskflow work``
processes configured for it: only declared queues exist, one tenant cannot crowd another
out of a shared queue (priority, horizon, timeout and unfinished-job limits), metric labels
are capped, and list and workflow views leave payload and result out unless asked."""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from tests.e2e.api_stack import (
    AUDIENCE, ISSUER, SECRET, Client, Isolated, start_api, stop, token,
)
from tests.e2e.processes import Role

pytestmark = pytest.mark.slow

QUEUES = ["default", "shared", "capped0", "capped1", "capped2", "capped3", "capped4"]
LABEL_CAP = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tenancy:
    def __init__(self, url: str, worker_metrics: str) -> None:
        self.url = url
        self.worker_metrics = worker_metrics


@pytest.fixture(scope="module")
async def tenancy(servers, tmp_path_factory) -> AsyncIterator[Tenancy]:
    folder = tmp_path_factory.mktemp("tenancy")
    iso = Isolated(servers, folder)
    await iso.create()
    port = _free_port()
    env = {
        "TASKFLOW_JWT_SECRET": SECRET, "TASKFLOW_AUTH__ISSUER": ISSUER,
        "TASKFLOW_AUTH__AUDIENCE": AUDIENCE, "TASKFLOW_REDIS_PREFIX": iso.prefix,
        "TASKFLOW_QUEUES": repr(QUEUES).replace("'", '"'),
        "TASKFLOW_QUEUE_LIMITS__shared__MAX_ACTIVE": "5",
        "TASKFLOW_QUEUE_LIMITS__shared__MAX_PRIORITY": "10",
        "TASKFLOW_QUEUE_LIMITS__shared__MAX_DELAY": "3600",
        "TASKFLOW_QUEUE_LIMITS__shared__MAX_TIMEOUT": "60",
        "TASKFLOW_METRICS__MAX_LABEL_VALUES": str(LABEL_CAP),
        "TASKFLOW_API__UNKNOWN_TASKS": "accept",
    }
    api, url = await start_api(iso, folder / "api.log", **env)
    # Serves every queue but "shared", whose jobs must stay put for the quota tests.
    queues = [a for q in QUEUES if q != "shared" for a in ("-q", q)]
    worker = Role(iso, ["work", *queues], folder / "worker.log", **env,
                  TASKFLOW_WORKER__METRICS_PORT=str(port))
    try:
        yield Tenancy(url, f"http://127.0.0.1:{port}/metrics")
    finally:
        stop(api, worker)
        await iso.drop()
    assert "Traceback" not in api.output(), api.output()[-3000:]


@pytest.fixture
def tclient(tenancy: Tenancy, http: aiohttp.ClientSession) -> Client:
    return Client(http, tenancy.url, token(f"t-{uuid.uuid4().hex[:12]}"))


def _problem(reply, status: int, field: str) -> None:
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.body["field"] == field, reply.body


# -- declared queues -------------------------------------------------------------------

async def test_an_undeclared_queue_is_refused_naming_the_field(tclient: Client):
    _problem(await tclient.post("/tasks", json={"task": "noop", "queue": "emails"}),
             422, "queue")
    batch = {"tasks": [{"task": "noop"}, {"task": "noop", "queue": "emails"}]}
    _problem(await tclient.post("/tasks/batch", json=batch), 422, "tasks[1].queue")
    flow = {"name": "w", "jobs": [{"name": "a", "task": "noop", "queue": "emails"}]}
    _problem(await tclient.post("/workflows", json=flow), 422, "jobs[0].queue")
    listed = await tclient.get("/tasks")
    assert listed.status == 200 and listed.body["items"] == []  # nothing was written


async def test_the_schema_lists_the_declared_queues(tenancy: Tenancy, tclient: Client):
    doc = (await tclient.get("/schema/openapi.json")).body
    assert doc["components"]["schemas"]["JobSpec"]["properties"]["queue"]["enum"] == sorted(
        QUEUES)


# -- one tenant cannot crowd another out of a shared queue ------------------------------

async def test_priority_horizon_and_timeout_are_bounded_per_queue(tclient: Client):
    job = {"task": "noop", "queue": "shared"}
    _problem(await tclient.post("/tasks", json={**job, "priority": 1000}), 422, "priority")
    _problem(await tclient.post("/tasks", json={**job, "delay": 86_400}), 422, "delay")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    _problem(await tclient.post("/tasks", json={**job, "run_at": later}), 422, "run_at")
    _problem(await tclient.post("/tasks", json={**job, "timeout": 86_400}), 422, "timeout")
    # Within the limits it is accepted; a job without a timeout gets the queue's bound.
    ok = await tclient.post("/tasks", json={**job, "priority": 10, "delay": 60})
    assert ok.status == 201, ok
    assert ok.body["timeout"] == 60
    # Another queue keeps the defaults.
    other = await tclient.post("/tasks", json={"task": "noop", "queue": "default",
                                               "priority": 1000, "delay": 86_400})
    assert other.status == 201 and other.body["timeout"] is None, other


async def test_a_tenant_cannot_flood_a_shared_queue_and_others_still_get_in(
        tenancy: Tenancy, http: aiohttp.ClientSession):
    noisy = Client(http, tenancy.url, token(f"noisy-{uuid.uuid4().hex[:8]}"))
    quiet = Client(http, tenancy.url, token(f"quiet-{uuid.uuid4().hex[:8]}"))
    job = {"task": "noop", "queue": "shared"}
    # Five unfinished jobs in the queue is the limit: concurrent single submits (group
    # commit) and a batch alike stop there.
    first = await asyncio.gather(*(noisy.post("/tasks", json=job) for _ in range(3)))
    assert [r.status for r in first] == [201] * 3
    _problem(await noisy.post("/tasks/batch", json={"tasks": [job] * 3}), 429, "queue")
    assert (await noisy.post("/tasks/batch", json={"tasks": [job] * 2})).status == 201
    over = await noisy.post("/tasks", json=job)
    _problem(over, 429, "queue")
    assert over.headers["Retry-After"] == "1"
    assert "at most 5" in over.body["detail"]
    flow = {"name": "w", "jobs": [{"name": "a", **job}]}
    _problem(await noisy.post("/workflows", json=flow), 429, "queue")
    # The other tenant's work still gets into the same queue.
    for _ in range(5):
        assert (await quiet.post("/tasks", json=job)).status == 201
    # Finished (here: cancelled) jobs no longer count.
    mine = (await noisy.get("/tasks", params={"queue": "shared"})).body["items"]
    assert len(mine) == 5
    assert (await noisy.post(f"/tasks/{mine[0]['id']}/cancel")).status == 200
    assert (await noisy.post("/tasks", json=job)).status == 201
    _problem(await noisy.post("/tasks", json=job), 429, "queue")


# -- metric labels are capped -----------------------------------------------------------

def _label_values(text: str, metric: str, label: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            found = re.search(rf'{label}="([^"]*)"', line)
            assert found, line
            values[found.group(1)] = values.get(found.group(1), 0) + float(line.split()[-1])
    return values


async def test_metric_label_values_are_capped(tenancy: Tenancy, tclient: Client,
                                             http: aiohttp.ClientSession):
    queues = [f"capped{i}" for i in range(5)]
    ids = []
    for i, queue in enumerate(queues):
        reply = await tclient.post("/tasks", json={"task": f"unknown.task{i}", "queue": queue})
        assert reply.status == 201, reply
        ids.append(reply.body["id"])
    for job_id in ids:  # the worker fails them: no handler has these names
        await tclient.wait_state(job_id, {"failed"})

    async with http.get(tenancy.url + "/metrics") as resp:
        api_text = await resp.text()
    submitted = _label_values(api_text, "taskflow_jobs_submitted_total", "queue")
    assert len(set(submitted) - {"other"}) <= LABEL_CAP, submitted
    assert submitted.get("other", 0) >= 2, submitted  # 5 queues, at most 3 by name
    assert sum(submitted.values()) >= 5

    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the worker records its outcomes in batches
        async with http.get(tenancy.worker_metrics) as resp:
            worker_text = await resp.text()
        finished = _label_values(worker_text, "taskflow_jobs_finished_total", "task")
        if sum(finished.values()) >= 5 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(set(finished) - {"other"}) <= LABEL_CAP, finished
    assert finished.get("other", 0) >= 2, finished
    by_queue = _label_values(worker_text, "taskflow_jobs_started_total", "queue")
    assert len(set(by_queue) - {"other"}) <= LABEL_CAP, by_queue


# -- payload and result stay out of list and workflow views unless asked ----------------

async def test_list_leaves_payload_and_result_out_unless_asked(tclient: Client):
    reply = await tclient.post("/tasks", json={"task": "echo", "payload": {"big": "x" * 1000}})
    job_id = reply.body["id"]
    await tclient.wait_state(job_id, {"succeeded"})

    plain = (await tclient.get("/tasks")).body["items"]
    assert [j["id"] for j in plain] == [job_id]
    assert "payload" not in plain[0] and "result" not in plain[0]
    assert plain[0]["state"] == "succeeded"

    both = (await tclient.get("/tasks", params={"include": "payload,result"})).body["items"]
    assert both[0]["payload"] == {"big": "x" * 1000} and both[0]["result"] == both[0]["payload"]
    only = (await tclient.get("/tasks", params={"include": "result"})).body["items"]
    assert "payload" not in only[0] and only[0]["result"] == {"big": "x" * 1000}

    for bad in ("payload,bogus", "", "payload, result"):
        _problem(await tclient.get("/tasks", params={"include": bad}), 422, "include")

    one = (await tclient.get(f"/tasks/{job_id}")).body  # a single job: everything
    assert one["payload"] == {"big": "x" * 1000} and one["result"] == one["payload"]


async def test_workflow_view_leaves_payload_and_result_out_unless_asked(tclient: Client):
    flow = {"name": "w", "jobs": [{"name": "a", "task": "echo", "payload": {"n": 1}},
                                  {"name": "b", "task": "noop", "after": ["a"]}]}
    created = await tclient.post("/workflows", json=flow)
    assert created.status == 201, created
    path = f"/workflows/{created.body['id']}"
    await tclient.wait_workflow(created.body["id"], {"succeeded"})

    plain = (await tclient.get(path)).body["jobs"]
    assert all("payload" not in j and "result" not in j for j in plain), plain
    full = (await tclient.get(path, params={"include": "payload,result"})).body["jobs"]
    by_name = {j["name"]: j for j in full}
    assert by_name["a"]["payload"] == {"n": 1} and by_name["a"]["result"] == {"n": 1}
    assert by_name["b"]["payload"] == {} and by_name["b"]["result"] is None
    _problem(await tclient.get(path, params={"include": "everything"}), 422, "include")
