"""A worker starts the dependents its own outcome flush releases (taskflow_finish_and_start,
``Worker._seats_for``): no claim round, no start statement, upstream results at hand."""

from __future__ import annotations

import asyncio

import asyncpg

from taskflow import metrics
from taskflow.jobs import submit, submit_workflow
from taskflow.models import NewJob, WorkflowNode
from taskflow.states import JobState
from taskflow.worker.registry import Registry
from tests.conftest import make_settings
from tests.helpers import running_worker, submit_jobs, wait_for_states, wait_until


def _node(name: str, *after: str, task: str = "collect", **job) -> WorkflowNode:
    return WorkflowNode(name=name, after=after, job=NewJob(
        task=task, max_attempts=job.pop("max_attempts", 1),
        payload={"name": name, **job.pop("payload", {})}, **job))


def _collector(seen: dict, gates: dict[str, asyncio.Event] | None = None) -> Registry:
    """``collect`` records the upstream results it got; a job whose payload names a
    ``gate`` ends only once the test opens it (``gates[name].set()``)."""
    registry = Registry()

    @registry.task("collect")
    async def collect(ctx):
        seen[ctx.payload["name"]] = dict(ctx.upstream_results)
        if ctx.payload.get("gate"):
            await gates[ctx.payload["gate"]].wait()
        if ctx.payload.get("nap"):
            await asyncio.sleep(ctx.payload["nap"])
        return {"from": ctx.payload["name"], "list": [1, 2.5, None, "x"]}

    return registry


def _flush_starts() -> float:
    return metrics.FLUSH_STARTS._default.value


async def _listening(worker) -> None:
    """Submit only once the worker hears index changes: until then (at its start), its
    flushes start nothing, as they cannot tell what was indexed since their last claim."""
    await wait_until(lambda: asyncio.sleep(0, worker.wake.listening))


async def _leases_left(stores) -> int:
    keys = [k async for k in stores.dispatch.client.scan_iter("*lease:*")]
    return len(keys) + sum(await stores.dispatch.depth("default"))


async def test_a_worker_runs_what_its_flush_releases_with_the_results_it_has(
        stores, settings):
    seen: dict = {}
    # The roots end only once every job below has been submitted and they have been
    # claimed (a flush starts nothing in a queue indexed since its last claim).
    roots = asyncio.Event()
    nodes = [_node("a", payload={"gate": "roots"}), _node("b", "a"), _node("c", "a"),
             _node("d", "b", "c")]
    before = _flush_starts()
    async with running_worker(stores, settings, _collector(seen, {"roots": roots})) as worker:
        await _listening(worker)
        _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
        # Jobs outside a workflow: results keyed by the upstream's id (it has no node).
        [plain] = (await submit(stores.store, stores.dispatch, [NewJob(
            task="collect", payload={"name": "plain", "gate": "roots"}, max_attempts=1,
            tenant="t")])).created
        [after] = (await submit(stores.store, stores.dispatch, [NewJob(
            task="collect", payload={"name": "after"}, max_attempts=1, tenant="t",
            depends_on=(plain.id,))])).created
        await wait_for_states(stores, [ids["a"], plain.id], {"running"})
        roots.set()
        done = await wait_for_states(stores, [*ids.values(), plain.id, after.id],
                                     {"succeeded"})
    # b, c (released by a), d (by b and c) and after (by plain): none claimed.
    assert _flush_starts() - before == 4
    assert all(j.attempts == 1 and j.worker == worker.name for j in done)
    result = {"from": "b", "list": [1, 2.5, None, "x"]}
    assert seen["b"] == seen["c"] == {"a": {**result, "from": "a"}}
    assert seen["d"] == {"b": result, "c": {**result, "from": "c"}}
    assert seen["after"] == {str(plain.id): {**result, "from": "plain"}}
    by_node = {j.node: j for j in done}
    assert by_node["a"].finished_at <= by_node["b"].started_at
    assert max(by_node["b"].finished_at, by_node["c"].finished_at) <= by_node["d"].started_at
    # Every lease taken for a started job was given back with its outcome.
    assert await _leases_left(stores) == 0
    for job in done:
        [attempt] = await stores.store.job_attempts(job.id)
        assert attempt.outcome == "succeeded" and attempt.worker == worker.name


async def test_upstreams_that_ended_in_an_earlier_flush_are_loaded(stores, settings):
    seen: dict = {}
    # j waits for a quick upstream and a slow one: the flush that releases it has only the
    # slow one's result at hand, the quick one's comes from PostgreSQL.
    nodes = [_node("quick"), _node("slow", payload={"nap": 0.3}), _node("j", "quick", "slow")]
    before = _flush_starts()
    async with running_worker(stores, settings, _collector(seen)) as worker:
        await _listening(worker)
        _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
        await wait_for_states(stores, list(ids.values()), {"succeeded"})
    assert _flush_starts() - before == 1
    assert seen["j"] == {"quick": {"from": "quick", "list": [1, 2.5, None, "x"]},
                         "slow": {"from": "slow", "list": [1, 2.5, None, "x"]}}


async def test_results_at_hand_past_the_budget_fail_the_job_unrun(stores, servers):
    seen: dict = {}
    cfg = make_settings(servers, worker={"max_upstream_bytes": 60})
    nodes = [_node("a"), _node("b"), _node("fan_in", "a", "b")]
    before = _flush_starts()
    async with running_worker(stores, cfg, _collector(seen)) as worker:
        await _listening(worker)
        _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
        jobs = await wait_for_states(stores, list(ids.values()), {"succeeded", "failed"})
    fan_in = {j.node: j for j in jobs}["fan_in"]
    assert fan_in.state is JobState.FAILED and "fan_in" not in seen
    assert "its upstream jobs' results add up to more than 60 bytes" in fan_in.error
    assert _flush_starts() - before == 1  # refused from the results at hand


async def test_a_ready_job_that_outranks_the_released_ones_runs_first(stores, servers):
    """With one seat, a job indexed while the upstream runs (priority 10) goes before the
    dependent its flush releases (priority 0), end to end. (The rule that makes the flush
    start nothing then, with seats free, is pinned down in test_flush_start_races.py:
    test_a_job_indexed_since_the_last_claim_keeps_the_flush_from_starting.)"""
    cfg = make_settings(servers, worker={"concurrency": 1})
    seen: dict = {}
    indexed = asyncio.Event()
    nodes = [_node("a", payload={"gate": "indexed"}), _node("b", "a")]
    async with running_worker(stores, cfg, _collector(seen, {"indexed": indexed})) as worker:
        await _listening(worker)
        _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
        await wait_for_states(stores, [ids["a"]], {"running"})
        [urgent] = await submit_jobs(stores, {"task": "collect", "priority": 10,
                                              "payload": {"name": "urgent"}})


        async def heard() -> bool:  # the worker has heard of urgent's index change
            at = worker._drained.get("default")
            return at is None or worker.wake.indexed_since("default", at)
        await wait_until(heard)
        indexed.set()  # a ends only now
        jobs = {j.id: j for j in await wait_for_states(
            stores, [*ids.values(), urgent], {"succeeded"})}
    assert jobs[urgent].started_at < jobs[ids["b"]].started_at


async def test_seats_never_exceed_the_worker_concurrency(stores, servers):
    cfg = make_settings(servers, worker={"concurrency": 2})
    registry = Registry()
    running, most = 0, 0

    @registry.task("count")
    async def count(ctx):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    nodes = [WorkflowNode(name="root", job=NewJob(task="count", max_attempts=1))]
    nodes += [WorkflowNode(name=f"c{i}", after=("root",),
                           job=NewJob(task="count", max_attempts=1)) for i in range(8)]
    before = _flush_starts()
    async with running_worker(stores, cfg, registry) as worker:
        await _listening(worker)
        _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
        await wait_for_states(stores, list(ids.values()), {"succeeded"})
    assert most == 2
    assert _flush_starts() - before == 2  # two seats were free; the rest went to Redis


async def test_a_flush_whose_commit_went_unanswered_puts_back_what_it_started(
        stores, settings):
    """The statement committed but its answer was lost: the dependents it started are
    running in PostgreSQL with nobody to run them. The worker looks for them by the
    flush's token prefix and puts them back in line, with no attempt spent."""
    seen: dict = {}
    nodes = [_node("a"), _node("b", "a"), _node("c", "a")]
    real = stores.store.finish_and_start
    lost = []

    async def committed_then_lost(*args, **kwargs):
        answer = await real(*args, **kwargs)
        if not lost:
            lost.append(answer)
            raise asyncpg.ConnectionDoesNotExistError("connection lost after the commit")
        return answer

    stores.store.finish_and_start = committed_then_lost
    async with running_worker(stores, settings, _collector(seen)) as worker:
        await _listening(worker)
        _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
        jobs = await wait_for_states(stores, list(ids.values()), {"succeeded"})
    assert [len(lost[0][1])] == [2]  # the lost answer had started b and c
    for job in jobs:
        assert job.attempts == 1
        [attempt] = await stores.store.job_attempts(job.id)
        assert attempt.outcome == "succeeded"
    assert seen["b"] == seen["c"] == {"a": {"from": "a", "list": [1, 2.5, None, "x"]}}


async def test_with_flush_starts_off_every_job_goes_through_the_index(stores, servers):
    cfg = make_settings(servers, worker={"flush_starts": False})
    seen: dict = {}
    nodes = [_node("a", payload={"nap": 0.1}), _node("b", "a"), _node("c", "b")]
    before = _flush_starts()
    async with running_worker(stores, cfg, _collector(seen)) as worker:
        await _listening(worker)
        _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
        await wait_for_states(stores, list(ids.values()), {"succeeded"})
    assert _flush_starts() == before
    assert seen["c"] == {"b": {"from": "b", "list": [1, 2.5, None, "x"]}}
