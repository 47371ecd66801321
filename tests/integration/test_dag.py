"""DAG dependencies and workflows against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec
import pytest

from taskflow.jobs import submit, submit_workflow
from taskflow.models import NewJob, UnknownUpstreams, WorkflowNode
from taskflow.states import JobState
from taskflow.worker.registry import Registry
from tests.helpers import running_worker, submit_jobs, wait_for_states

DONE = {"succeeded", "failed", "cancelled"}


def collector() -> tuple[Registry, list]:
    """A registry whose `collect` task records what it saw of its upstream results."""
    registry = Registry()
    seen: list = []

    @registry.task("collect")
    async def collect(ctx):
        seen.append((ctx.payload.get("name"), dict(ctx.upstream_results)))
        return {"name": ctx.payload.get("name"), "n": len(ctx.upstream_results)}

    return registry, seen


def node(name: str, *after: str, task: str = "collect", **job) -> WorkflowNode:
    payload = job.pop("payload", {})
    if task == "collect":
        payload = {"name": name, **payload}
    return WorkflowNode(name=name, after=after,
                        job=NewJob(task=task, max_attempts=job.pop("max_attempts", 1),
                                   payload=payload, **job))


async def test_diamond_runs_in_order_and_passes_results_by_node_name(stores, settings):
    registry, seen = collector()
    nodes = [node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c")]
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "tenant-1",
                                          "diamond", nodes)
    jobs = {j.node: j for j in await stores.store.workflow_jobs(workflow.id)}
    assert jobs["a"].state is JobState.QUEUED
    assert {jobs[n].state for n in "bcd"} == {JobState.BLOCKED}
    assert sum(await stores.dispatch.depth("default")) == 1  # blocked jobs are not in Redis
    async with running_worker(stores, settings, registry):
        done = await wait_for_states(stores, list(ids.values()), {"succeeded"})
    by_node = {j.node: j for j in done}
    assert by_node["a"].finished_at <= by_node["b"].started_at
    assert by_node["a"].finished_at <= by_node["c"].started_at
    assert max(by_node["b"].finished_at, by_node["c"].finished_at) <= by_node["d"].started_at
    d_saw = dict(seen)["d"]
    assert d_saw == {"b": {"name": "b", "n": 1}, "c": {"name": "c", "n": 1}}
    assert by_node["d"].attempts == 1


async def test_a_released_dependent_is_due_from_its_release_and_a_later_delay_stands(
        stores, settings):
    """Its queue wait (due -> started) must not count the time its upstream ran: run_at
    moves up to the release. A dependent submitted with a delay that ends after the
    release keeps it and waits in the delayed set."""
    registry, _ = collector()

    @registry.task("nap")
    async def nap(ctx):
        await asyncio.sleep(0.3)

    nodes = [node("a", task="nap"), node("b", "a"), node("c", "a")]
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "tenant-1", "w", nodes)
    created = {j.node: j for j in await stores.store.workflow_jobs(workflow.id)}
    due_later = created["a"].created_at + timedelta(seconds=30)
    later = await submit(stores.store, stores.dispatch, [NewJob(
        task="collect", payload={"name": "later"}, max_attempts=1, depends_on=(ids["a"],),
        tenant="tenant-1", run_at=due_later)])
    async with running_worker(stores, settings, registry):
        done = {j.node: j for j in await wait_for_states(stores, [ids["b"], ids["c"]],
                                                          {"succeeded"})}
    a = await stores.store.get_job(ids["a"])
    for name in "bc":
        assert done[name].run_at >= a.started_at + timedelta(seconds=0.25), name
        assert done[name].run_at <= done[name].started_at
    late = await stores.store.get_job(later.created[0].id)
    assert late.state is JobState.SCHEDULED and late.run_at == due_later


async def test_chain_of_100(stores, settings):
    registry, seen = collector()
    nodes = [node("n0")] + [node(f"n{i}", f"n{i - 1}") for i in range(1, 100)]
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "chain", nodes)
    async with running_worker(stores, settings, registry):
        jobs = await wait_for_states(stores, list(ids.values()), {"succeeded"}, timeout=60)
    assert [name for name, _ in seen] == [f"n{i}" for i in range(100)]
    order = sorted(jobs, key=lambda j: j.started_at)
    assert [j.node for j in order] == [f"n{i}" for i in range(100)]


async def test_a_released_dependent_never_jumps_a_ready_job_that_outranks_it(
        stores, settings):
    """a (holding the only slot) releases b while c, priority 10, waits in the ready set:
    b, priority 0, runs after c (a worker that started what its flush released, to save
    the index and claim round trips, must still respect this)."""
    registry, _ = collector()
    gate = asyncio.Event()
    running = asyncio.Event()

    @registry.task("held")
    async def held(ctx):
        running.set()
        await gate.wait()

    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        node("a", task="held", priority=20), node("b", "a")])
    async with running_worker(stores, settings, registry, concurrency=1):
        await asyncio.wait_for(running.wait(), 10)
        [c] = await submit_jobs(stores, {"task": "collect", "priority": 10, "tenant": "t",
                                         "payload": {"name": "c"}})
        gate.set()
        done = {j.id: j for j in await wait_for_states(stores, [ids["b"], c], {"succeeded"})}
    assert done[c].started_at < done[ids["b"]].started_at


async def test_a_fan_out_never_runs_more_than_the_concurrency(stores, settings):
    """A root releasing 40 dependents into a worker of 4 slots: 4 run at a time."""
    registry, _ = collector()
    now = 0
    peak = 0

    @registry.task("count")
    async def count(ctx):
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        await asyncio.sleep(0.02)
        now -= 1

    nodes = [node("root", task="count")]
    nodes += [node(f"d{i}", "root", task="count") for i in range(40)]
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "fan", nodes)
    async with running_worker(stores, settings, registry, concurrency=4):
        await wait_for_states(stores, list(ids.values()), {"succeeded"})
    assert peak == 4


async def test_depends_on_existing_jobs_by_id(stores, settings):
    registry, seen = collector()
    first = await submit_jobs(stores, {"task": "echo", "payload": {"x": 1}, "tenant": "t1"})
    done_already = await submit_jobs(stores, {"task": "echo", "payload": 2, "tenant": "t1"})
    async with running_worker(stores, settings, registry):
        await wait_for_states(stores, done_already, {"succeeded"})
        [child] = await submit_jobs(stores, {"task": "collect", "tenant": "t1",
                                             "depends_on": (first[0], done_already[0])})
        await wait_for_states(stores, [child], {"succeeded"})
    [(_, results)] = seen
    assert results == {str(first[0]): {"x": 1}, str(done_already[0]): 2}


async def test_all_upstreams_done_already_queues_at_once(stores, settings):
    ids = await submit_jobs(stores, {"task": "noop"})
    async with running_worker(stores, settings):
        await wait_for_states(stores, ids, {"succeeded"})
    result = await submit(stores.store, stores.dispatch,
                          [NewJob(task="noop", max_attempts=1, depends_on=(ids[0],))])
    assert result.created[0].state is JobState.QUEUED


async def test_unknown_and_other_tenants_upstreams_are_rejected_by_id(stores):
    [mine] = await submit_jobs(stores, {"task": "noop", "tenant": "t1"})
    [theirs] = await submit_jobs(stores, {"task": "noop", "tenant": "t2"})
    missing = msgspec.convert("01900000-0000-7000-8000-000000000000", type=__import__("uuid").UUID)
    with pytest.raises(UnknownUpstreams) as info:
        await submit(stores.store, stores.dispatch,
                     [NewJob(task="noop", max_attempts=1, tenant="t1",
                             depends_on=(mine, theirs, missing))])
    assert set(info.value.ids) == {theirs, missing}
    assert str(theirs) in str(info.value) and str(mine) not in str(info.value)
    # nothing was written
    assert len(await stores.store.get_jobs([mine, theirs])) == 2
    count = await stores.store.pool.fetchval("SELECT count(*) FROM jobs")
    assert count == 2


async def test_failure_of_a_middle_node_cancels_exactly_its_descendants(stores, settings):
    #   a -> b(fails) -> c -> e
    #   a -> d ------------> e?  (e depends on c and d: cancelled through c)
    #   a -> f (independent branch, must succeed)
    nodes = [node("a"), node("b", "a", task="fail", payload={"message": "b broke"}),
             node("c", "b"), node("d", "a"), node("e", "c", "d"), node("f", "a")]
    registry, _ = collector()
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "fails", nodes)
    async with running_worker(stores, settings, registry):
        jobs = await wait_for_states(stores, list(ids.values()), DONE)
    state = {j.node: j.state.value for j in jobs}
    assert state == {"a": "succeeded", "b": "failed", "c": "cancelled", "d": "succeeded",
                     "e": "cancelled", "f": "succeeded"}
    by_node = {j.node: j for j in jobs}
    for name in "ce":
        assert by_node[name].cancelled_by == ids["b"]
        assert f"upstream job {ids['b']} (b) ended failed" in by_node[name].error
        assert by_node[name].attempts == 0  # never ran


async def test_submit_racing_the_upstreams_completion_never_leaves_the_child_blocked(stores):
    """A child submitted while its upstream finishes must be released either way round:
    the upstream row lock orders the two transactions."""
    import asyncio

    from taskflow.models import Outcome

    for _ in range(60):
        [up] = await submit_jobs(stores, {"task": "noop"})
        claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
        [started] = await stores.store.start_jobs(claims, "w")
        done = Outcome(started.id, started.lease_token, JobState.SUCCEEDED, "succeeded", 0.0,
                       result="null")
        child = NewJob(task="noop", max_attempts=1, depends_on=(up,))
        finished, inserted = await asyncio.gather(
            stores.store.finish_jobs([done]), stores.store.insert_jobs([child]))
        [job] = await stores.store.get_jobs([child.id])
        assert job.state is JobState.QUEUED, (job.state, job.pending_upstreams)
        assert job.pending_upstreams == 0
        await stores.dispatch.release("default", claims)


async def _retry(stores, job_id, tenant="t"):
    from taskflow.jobs import retry

    job = await retry(stores.store, stores.dispatch, job_id, tenant)
    assert job is not None
    return job


async def test_child_of_two_failed_upstreams_runs_once_both_are_retried(stores, settings):
    # x and y fail once each (fail the first attempt, max_attempts 1); d needs both.
    nodes = [node("x", task="fail", payload={"times": 1}),
             node("y", task="fail", payload={"times": 1}),
             node("d", "x", "y")]
    registry, seen = collector()
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "two", nodes)
    async with running_worker(stores, settings, registry):
        jobs = await wait_for_states(stores, list(ids.values()), DONE)
        assert {j.node: j.state.value for j in jobs} == {
            "x": "failed", "y": "failed", "d": "cancelled"}
        await _retry(stores, ids["x"])
        await wait_for_states(stores, [ids["x"]], {"succeeded"})
        [d] = await stores.store.get_jobs([ids["d"]])
        assert d.state is JobState.CANCELLED  # y has still failed
        assert d.pending_upstreams == 1  # but x's success was counted
        await _retry(stores, ids["y"])
        [d] = await wait_for_states(stores, [ids["d"]], {"succeeded"})
    assert d.attempts == 1 and d.cancelled_by is None
    assert [name for name, _ in seen] == ["d"]


async def test_job_born_cancelled_behind_a_failed_upstream_runs_after_its_retry(
        stores, settings):
    [up] = await submit_jobs(stores, {"task": "fail", "payload": {"times": 1},
                                      "max_attempts": 1, "tenant": "t"})
    async with running_worker(stores, settings):
        await wait_for_states(stores, [up], {"failed"})
        result = await submit(stores.store, stores.dispatch, [
            NewJob(task="noop", max_attempts=1, tenant="t", depends_on=(up,))])
        [entry] = result.created
        assert entry.state is JobState.CANCELLED
        [child] = await stores.store.get_jobs([entry.id])
        assert child.cancelled_by == up and "ended failed" in child.error
        await _retry(stores, up)
        await wait_for_states(stores, [entry.id], {"succeeded"})


async def test_retrying_a_cancelled_child_while_its_upstream_has_failed_is_refused(
        stores, settings):
    # Blocked behind a failed upstream, it would wait for ever unless someone thought of
    # retrying the upstream: the retry is refused, naming the upstream to retry instead.
    from taskflow.jobs import UpstreamNotRetried

    nodes = [node("up", task="fail", payload={"times": 1}), node("child", "up", task="noop")]
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
    async with running_worker(stores, settings):
        await wait_for_states(stores, [ids["child"]], {"cancelled"})
        with pytest.raises(UpstreamNotRetried) as refused:
            await _retry(stores, ids["child"])
        assert refused.value.upstreams == [ids["up"]]
        assert (await stores.store.get_job(ids["child"])).state is JobState.CANCELLED
        assert await stores.dispatch.depth("default") == (0, 0, 0)  # not indexed
        await _retry(stores, ids["up"])
        [done] = await wait_for_states(stores, [ids["child"]], {"succeeded"})
    assert done.attempts == 1
