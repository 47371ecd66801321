"""A worker's outcome flush that starts the dependents it releases (taskflow_finish_and_start,
Worker._seats_for): against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio

from taskflow import metrics

from taskflow.jobs import submit_workflow
from taskflow.models import NewJob, Outcome, WorkflowNode
from taskflow.states import JobState
from taskflow.supervise import cancel_and_wait
from taskflow.worker.builtins import builtin_registry
from taskflow.worker.registry import Registry, RetryAfter
from taskflow.worker.worker import Worker
from tests.helpers import running_worker, submit_jobs, wait_for_states, wait_until


def chain(*names: str, task: str = "noop") -> list[WorkflowNode]:
    return [WorkflowNode(name=n, after=(names[i - 1],) if i else (),
                         job=NewJob(task=task, max_attempts=1))
            for i, n in enumerate(names)]


async def _start_root(stores, name: str = "w"):
    """Claim and start the only ready job of the default queue."""
    claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
    [root] = await stores.store.start_jobs(claims, name)
    return root


async def test_a_started_dependent_put_back_cancelled_cancels_its_own_dependents(
        stores, settings):
    """A flush that started b failed without knowing it committed (it did); b's cancel
    was requested meanwhile. Putting b back ends it cancelled, and c, blocked behind it,
    must be cancelled too, not left blocked for ever."""
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w",
                                          chain("a", "b", "c"))
    a = await _start_root(stores)
    done = Outcome(a.id, a.lease_token, JobState.SUCCEEDED, "succeeded", 0.0, result="1")
    _, started, _ = await stores.store.finish_and_start([done], ["default"], 1, "w", "p.")
    assert [j.id for j in started] == [ids["b"]]
    assert await stores.store.request_running_job_cancel(ids["b"], "t") is not None
    registry, outbound = builtin_registry(settings.outbound)
    worker = Worker(settings, stores.store, stores.dispatch, registry)
    worker._maybe_started.append(([a.id], "p."))
    await worker._return_unconfirmed_starts()
    jobs = {j.node: j for j in await stores.store.workflow_jobs(workflow.id)}
    assert jobs["b"].state is JobState.CANCELLED
    assert jobs["c"].state is JobState.CANCELLED
    await outbound.close()



async def _listen(worker) -> asyncio.Task:
    """The worker's wake-up listener, subscribed: a flush starts jobs only in queues it
    knows nothing was indexed in since their last claim (Worker._seats_for)."""
    task = asyncio.create_task(worker.wake.run())
    while not worker.wake.listening:
        await asyncio.sleep(0.01)
    return task


def _gated(stores, settings, concurrency: int, queues: list[str] | None = None):
    """A worker (its duties not running: the test drives it) whose `gated` task runs
    until the gate opens."""
    registry, outbound = builtin_registry(settings.outbound)
    gate = asyncio.Event()

    @registry.task("gated")
    async def gated(ctx):
        await gate.wait()

    worker = Worker(settings, stores.store, stores.dispatch, registry, queues=queues,
                    concurrency=concurrency)
    return worker, gate, outbound


def _slow_settle(stores, monkeypatch) -> asyncio.Event:
    """The worker's Redis settles wait until the returned event is set."""
    settled = asyncio.Event()
    settle = stores.dispatch.settle

    async def slow_settle(*args, **kwargs):
        await settled.wait()
        return await settle(*args, **kwargs)

    monkeypatch.setattr(stores.dispatch, "settle", slow_settle)
    return settled


async def _stop(worker, gate, outbound):
    gate.set()
    tasks = [h.task for h in worker.held.values() if h.task is not None]
    await asyncio.gather(*tasks, return_exceptions=True)
    await worker._drain_outcomes()
    await outbound.close()


async def test_a_flush_and_a_claim_round_never_fill_the_same_seat(stores, settings):
    """The claimer counts its free seats, then its round (a task of its own) claims them;
    a flush running in between must see them taken, or both fill them: b started by the
    flush and x claimed by the round, two jobs running in a worker of one slot."""
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="gated", max_attempts=1))])
    worker, gate, outbound = _gated(stores, settings, concurrency=1)
    listener = await _listen(worker)
    assert await worker._claim(1) == (0, None)  # a runs
    await asyncio.gather(*[h.task for h in worker.held.values()])
    assert await worker._claim(1) == (1, None)  # the ready set is empty: drained
    assert worker.outcomes and "default" in worker._drained
    [x] = await submit_jobs(stores, {"task": "gated", "tenant": "t"})
    # The claimer wakes (a slot freed) just before the flusher (a's outcome is ready).
    claim = asyncio.ensure_future(worker._claim(worker._free()))
    flush = asyncio.ensure_future(worker._flush())
    await asyncio.gather(claim, flush)
    running = [j.id for j in await stores.store.get_jobs([ids["b"], x])
               if j.state is JobState.RUNNING]
    assert worker.running <= 1 and len(running) <= 1, running
    await _stop(worker, gate, outbound)
    await cancel_and_wait(listener)


async def test_a_queue_the_last_round_did_not_reach_is_not_taken_for_drained(
        stores, settings):
    """A round that fills its seats in q1 stops before q2: what q2 holds now is unknown
    (x, priority 10, came since its last claim), so a flush must not start b, priority 0,
    there ahead of x."""
    worker, gate, outbound = _gated(stores, settings, concurrency=1, queues=["q1", "q2"])
    listener = await _listen(worker)
    assert await worker._claim(1) == (1, None)  # both queues empty
    assert set(worker._drained) == {"q1", "q2"}
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", queue="q1", max_attempts=1)),
        WorkflowNode(name="b", after=("a",),
                     job=NewJob(task="gated", queue="q2", max_attempts=1))])
    [x] = await submit_jobs(stores, {"task": "gated", "queue": "q2", "priority": 10,
                                     "tenant": "t"})
    worker._next_queue = 0
    assert await worker._claim(1) == (0, None)  # a, from q1; q2 not reached
    await asyncio.gather(*[h.task for h in worker.held.values()])
    await worker._flush()
    b = await stores.store.get_job(ids["b"])
    assert b.state is JobState.QUEUED  # for the claimer: x first
    await _stop(worker, gate, outbound)
    await cancel_and_wait(listener)


async def test_a_flush_does_not_start_ahead_of_what_the_last_one_queued(
        stores, settings, monkeypatch):
    """a releases b (priority 1) and c (priority 0) into one free seat: b starts, c is
    queued, to be indexed by the Redis settle that runs behind the flush. b ends and
    releases d (priority -5) before that settle is through: d must not start ahead of c,
    which the claimer has not yet been told of."""
    settled = _slow_settle(stores, monkeypatch)
    worker, gate, outbound = _gated(stores, settings, concurrency=1)
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="noop", priority=1,
                                                        max_attempts=1)),
        WorkflowNode(name="c", after=("a",), job=NewJob(task="gated", max_attempts=1)),
        WorkflowNode(name="d", after=("b",), job=NewJob(task="gated", priority=-5,
                                                        max_attempts=1))])
    assert await worker._claim(2) == (1, None)  # a; the queue is drained
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    await worker._flush()  # a: b starts, c is queued
    assert (await stores.store.get_job(ids["b"])).state is not JobState.QUEUED
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    await worker._flush()  # b: releases d
    d = await stores.store.get_job(ids["d"])
    assert d.state is JobState.QUEUED
    settled.set()
    await _stop(worker, gate, outbound)
    await cancel_and_wait(listener)
    assert not any(worker._indexing.values())  # settled: flushes may start jobs again


async def test_a_job_indexed_since_the_last_claim_keeps_the_flush_from_starting(
        stores, settings):
    """a ran; urgent (priority 10) was indexed after a's claim emptied the queue, and the
    worker heard of it (enqueue.lua's message, with Redis's time). a's flush, with seats
    free, must not start b (priority 0): urgent outranks it."""
    worker, gate, outbound = _gated(stores, settings, concurrency=2)
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="noop", max_attempts=1))])
    assert await worker._claim(2) == (1, None)  # a; the ready set is empty now
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    [urgent] = await submit_jobs(stores, {"task": "noop", "priority": 10})
    at = worker._drained["default"]

    async def heard() -> bool:
        return worker.wake.indexed_since("default", at)
    await wait_until(heard)
    await worker._flush()  # a: releases b
    assert (await stores.store.get_job(ids["b"])).state is JobState.QUEUED
    await worker._settling
    claims = (await stores.dispatch.claim("default", 2, 10_000)).claims
    assert [c.id for c in claims] == [str(urgent), str(ids["b"])]
    await outbound.close()
    await cancel_and_wait(listener)


async def test_a_retry_due_at_once_in_the_same_flush_is_not_passed_over(stores, settings):
    """a succeeds and releases b (priority 0); r (priority 5) fails in the same batch and
    is retried at once (no delay). The flush must not start b: r, queued by that very
    flush, outranks it, and a claim would have taken r first."""
    registry, outbound = builtin_registry(settings.outbound)
    tries = 0

    @registry.task("again")
    async def again(ctx):
        nonlocal tries
        tries += 1
        if tries == 1:
            raise RetryAfter(0, "once more, now")

    worker = Worker(settings, stores.store, stores.dispatch, registry, concurrency=3)
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="noop", max_attempts=1))])
    [r] = await submit_jobs(stores, {"task": "again", "priority": 5})
    assert await worker._claim(3) == (1, None)  # r and a; the queue is drained
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    assert {o.outcome for o in worker.outcomes} == {"succeeded", "retried"}
    await worker._flush()  # a and r together
    await worker._settling
    assert (await stores.store.get_job(ids["b"])).state is JobState.QUEUED
    claims = (await stores.dispatch.claim("default", 2, 10_000)).claims
    assert [c.id for c in claims] == [str(r), str(ids["b"])]
    await outbound.close()
    await cancel_and_wait(listener)


async def test_a_started_dependent_sees_its_upstream_results_as_postgresql_gives_them(
        stores, settings):
    """b, started by the flush that recorded a, gets a's result from the outcome at hand:
    it must be what PostgresStore.upstream_results gives (the stored jsonb: its key
    order, its numbers), the same whichever way b starts."""
    registry = Registry()
    seen = []

    @registry.task("produce")
    async def produce(ctx):
        await asyncio.sleep(0.3)  # the worker is idle when it ends
        return {"zz": 1, "a": [1.5, 1e20], "m": "x"}

    @registry.task("consume")
    async def consume(ctx):
        seen.append(ctx.upstream_results)

    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="produce", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="consume", max_attempts=1))])
    before = metrics.FLUSH_STARTS._default.value
    async with running_worker(stores, settings, registry, concurrency=2):
        await wait_for_states(stores, list(ids.values()), {"succeeded"})
    assert metrics.FLUSH_STARTS._default.value == before + 1  # b started by a's flush
    stored, _ = await stores.store.upstream_results([ids["b"]], 1 << 20)
    [got] = seen
    assert list(got["a"].items()) == list(stored[ids["b"]]["a"].items())
    assert [type(v) for v in got["a"]["a"]] == [type(v) for v in stored[ids["b"]]["a"]["a"]]


async def _b_waits_on_u_and_a(stores, settings):
    """b waits on u and a; u and a have run and u's outcome is stored: the flush of a's
    (``later``) will start b, with u's result to load from PostgreSQL."""
    registry, outbound = builtin_registry(settings.outbound)
    worker = Worker(settings, stores.store, stores.dispatch, registry, concurrency=2)
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="u", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("u", "a"), job=NewJob(task="noop", max_attempts=1))])
    assert await worker._claim(3) == (1, None)  # u and a; the queue is drained
    await asyncio.gather(*[h.task for h in worker.held.values()])
    later = [o for o in worker.outcomes if o.id == ids["a"]]
    worker.outcomes = [o for o in worker.outcomes if o.id != ids["a"]]
    await worker._flush()  # u
    await worker._settling
    return worker, outbound, listener, ids, later


async def _postgresql_away(*args, **kwargs):
    raise ConnectionError("PostgreSQL is away")


async def test_a_started_job_given_back_is_not_adopted_after_it_went_back_in_line(
        stores, settings, monkeypatch, caplog):
    """a's flush starts b, whose other upstream ended earlier: its results must be loaded,
    and PostgreSQL fails. The heartbeat hands b back (queued, indexed, lease given back)
    before the flush's settle (behind it in Redis) has run: that settle must not then take
    b's lease, or the next claim drops b from the ready set and nobody runs it."""
    worker, outbound, listener, ids, later = await _b_waits_on_u_and_a(stores, settings)

    monkeypatch.setattr(stores.store, "upstream_results", _postgresql_away)
    settled = _slow_settle(stores, monkeypatch)
    worker.outcomes = later
    await worker._flush()  # a: b starts, its upstream results cannot be loaded
    assert (await stores.store.get_job(ids["b"])).state is JobState.RUNNING
    await worker._heartbeat()  # b goes back
    assert (await stores.store.get_job(ids["b"])).state is JobState.QUEUED
    # The heartbeat held b's lease until then (it had none: expected, not lost by Redis).
    assert "Redis had lost" not in caplog.text
    settled.set()
    await worker._settling
    claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
    assert [c.id for c in claims] == [str(ids["b"])]
    await outbound.close()
    await cancel_and_wait(listener)


async def test_a_heartbeat_before_the_settle_leaves_a_started_job_alone(
        stores, settings, monkeypatch):
    """Between a flush that starts b and its settle (which takes b's lease), b has no
    lease in Redis: a heartbeat then must not take it as lost by Redis (a false "Redis
    had lost our leases" and a PostgreSQL check); the settle's own lease stands."""
    settled = _slow_settle(stores, monkeypatch)
    worker, gate, outbound = _gated(stores, settings, concurrency=2)
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="gated", max_attempts=1))])
    assert await worker._claim(2) == (1, None)  # a; the queue is drained
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    await worker._flush()  # a: b starts; its lease waits for the settle
    b = worker.held[str(ids["b"])]
    assert b.task is not None and b.adopting
    retaken = metrics.LEASES_RETAKEN.labels("default").value
    await worker._heartbeat()
    assert metrics.LEASES_RETAKEN.labels("default").value == retaken
    assert await stores.dispatch.lease_holders("default", [str(ids["b"])]) == [None]
    settled.set()
    await worker._settling
    assert not b.adopting
    assert await stores.dispatch.lease_holders("default", [str(ids["b"])]) == [
        b.claim.token]
    await _stop(worker, gate, outbound)
    await cancel_and_wait(listener)


async def test_a_flush_between_two_queues_of_a_round_does_not_share_its_seats(
        stores, settings):
    """A round counts its seats once, then claims queue after queue. q1 is empty (drained,
    seats left); before the claimer comes back to claim q2 with what is left, the flusher
    runs and starts b in q1 in one of those seats: q2's claim must not fill it again (b,
    x1 and x2 running in a worker of two slots)."""
    worker, gate, outbound = _gated(stores, settings, concurrency=2, queues=["q1", "q2"])
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", queue="q1", max_attempts=1)),
        WorkflowNode(name="b", after=("a",),
                     job=NewJob(task="gated", queue="q1", max_attempts=1))])
    worker._next_queue = 0
    assert await worker._claim(1) == (0, None)  # a, from q1
    await asyncio.gather(*[h.task for h in worker.held.values()])
    xs = await submit_jobs(stores, *[{"task": "gated", "queue": "q2", "tenant": "t"}] * 2)
    claim_queue = worker._claim_queue

    async def then_a_flush(queue, limit):
        result = await claim_queue(queue, limit)
        if queue == "q1":
            # The round's task is done, its seats handed back; the flusher (a's outcome
            # is ready) runs before the claimer resumes.
            asyncio.ensure_future(worker._flush())
            await asyncio.sleep(0)
        return result

    worker._claim_queue = then_a_flush
    worker._next_queue = 0
    await worker._claim(worker._free())
    async with worker._flush_lock:
        pass
    running = [j.id for j in await stores.store.get_jobs([ids["b"], *xs])
               if j.state is JobState.RUNNING]
    assert worker.running <= 2 and len(running) <= 2, running
    await _stop(worker, gate, outbound)
    await cancel_and_wait(listener)


async def test_a_delayed_job_due_during_the_round_that_drained_its_queue_goes_first(
        stores, settings):
    """The round that drains q1 learns that y (priority 10) is delayed in q1 until soon;
    y comes due while the round goes on to q2. A flush then must not start b (priority 0)
    in q1 ahead of y: the claimer has not promoted y yet, but it outranks b."""
    worker, gate, outbound = _gated(stores, settings, concurrency=3, queues=["q1", "q2"])
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", queue="q1", max_attempts=1)),
        WorkflowNode(name="b", after=("a",),
                     job=NewJob(task="gated", queue="q1", max_attempts=1))])
    worker._next_queue = 0
    # As the claimer does: a from q1, and no delayed job anywhere yet.
    left, worker._next_due = await worker._claim(1)
    assert (left, worker._next_due) == (0, None)
    await asyncio.gather(*[h.task for h in worker.held.values()])
    [y] = await submit_jobs(stores, {"task": "gated", "queue": "q1", "priority": 10,
                                     "delay": 0.3, "tenant": "t"})
    claim_queue = worker._claim_queue

    async def then_a_flush(queue, limit):
        result = await claim_queue(queue, limit)
        if queue == "q1":
            assert result[2] is not None  # y's due time
            await asyncio.sleep(0.5)  # y is due now
            await worker._flush()
        return result

    worker._claim_queue = then_a_flush
    worker._next_queue = 0
    await worker._claim(2)
    assert (await stores.store.get_job(ids["b"])).state is JobState.QUEUED  # y first
    await _stop(worker, gate, outbound)
    await cancel_and_wait(listener)


async def test_a_wake_up_from_an_older_release_holds_off_flush_starts_until_the_next_claim(
        stores, settings):
    """An older release's enqueue.lua publishes a count without a time. That must hold off
    flush starts in its queue until a claim has seen what it indexed, not for as long as
    the listener stays subscribed."""
    worker, gate, outbound = _gated(stores, settings, concurrency=2)
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", chain(
        "a", "b"))
    assert await worker._claim(2) == (1, None)  # a; the queue is drained
    await asyncio.gather(*[h.task for h in worker.held.values()])
    at = worker._drained["default"]
    await stores.dispatch.client.publish(stores.dispatch.keys("default").wake, "1")
    # Heard, and dated by Redis's clock then.
    await wait_until(lambda: asyncio.sleep(
        0, at < worker.wake._indexed_at["default"] < float("inf")), timeout=5.0)
    assert worker.wake.indexed_since("default", at)
    assert await worker._claim(1) == (1, None)  # saw what that message told of
    before = metrics.FLUSH_STARTS._default.value
    await worker._flush()  # a: b starts here
    assert metrics.FLUSH_STARTS._default.value == before + 1
    await _stop(worker, gate, outbound)
    await cancel_and_wait(listener)


async def test_a_worker_clock_ahead_of_redis_does_not_spin_on_a_delayed_job(
        stores, settings, monkeypatch):
    """Due times are Redis's clock. A worker whose own clock runs 5 s ahead took a job due
    in 1 s as overdue: its claimer made round after round, without a pause, until Redis's
    clock got there. It waits for Redis's due time instead (and the job still runs)."""
    import time as real_time
    import types

    from taskflow.worker import worker as worker_module

    ahead = types.SimpleNamespace(**{n: getattr(real_time, n) for n in dir(real_time)
                                     if not n.startswith("_")})
    ahead.time = lambda: real_time.time() + 5.0
    monkeypatch.setattr(worker_module, "time", ahead)
    claims = 0
    claim = stores.dispatch.claim

    async def counted(*args, **kwargs):
        nonlocal claims
        claims += 1
        return await claim(*args, **kwargs)

    monkeypatch.setattr(stores.dispatch, "claim", counted)
    async with running_worker(stores, settings, maintenance=False) as worker:
        await wait_until(lambda: asyncio.sleep(0, worker.wake.listening))
        [job] = await submit_jobs(stores, {"task": "noop", "delay": 1.0, "tenant": "t"})
        await asyncio.sleep(0.5)
        before_due = claims
        await wait_for_states(stores, [job], {"succeeded"})
    assert before_due < 10, before_due


async def test_a_started_job_given_back_keeps_a_lease_while_postgresql_is_away(
        stores, settings, monkeypatch):
    """a's flush starts b, whose upstream results cannot be loaded: b is the heartbeat's
    to hand back, and PostgreSQL stays away a while. Like a claimed job whose start
    failed, b must hold a lease meanwhile: with none, the rescuer's sweep takes b for a
    lost attempt and fails it (its only attempt), though it never ran."""
    from taskflow.worker.maintenance import Maintenance

    worker, outbound, listener, ids, later = await _b_waits_on_u_and_a(stores, settings)

    hand_back = stores.store.hand_back_jobs
    monkeypatch.setattr(stores.store, "upstream_results", _postgresql_away)
    monkeypatch.setattr(stores.store, "hand_back_jobs", _postgresql_away)
    worker.outcomes = later
    await worker._flush()  # a: b starts, its upstream results cannot be loaded
    await worker._settling
    await worker._heartbeat()  # b cannot go back yet
    assert (await stores.store.get_job(ids["b"])).state is JobState.RUNNING
    # A lease later, the sweep (of any process) looks at b.
    await stores.store.pool.execute(
        "UPDATE jobs SET started_at = now() - interval '1 hour' WHERE id = $1", ids["b"])

    async def old_index():
        return 3600.0

    monkeypatch.setattr(stores.dispatch, "index_age", old_index)
    await Maintenance(settings, stores.store, stores.dispatch, ["default"]).sweep_running()
    assert (await stores.store.get_job(ids["b"])).state is JobState.RUNNING
    monkeypatch.setattr(stores.store, "hand_back_jobs", hand_back)
    await worker._heartbeat()  # b goes back, no attempt spent
    b = await stores.store.get_job(ids["b"])
    assert b.state is JobState.QUEUED and b.attempts == 0
    await outbound.close()
    await cancel_and_wait(listener)


async def test_a_flush_does_not_start_ahead_of_what_the_last_settle_indexed(
        stores, settings):
    """a releases b (priority 1) and c (priority 0) into one free seat: b starts, c is
    queued and indexed by the flush's settle. b ends and releases d (priority -5) after
    that settle, but before the wake-up message of c's enqueue has come round: this worker
    indexed c itself, it must not start d ahead of c."""
    worker, gate, outbound = _gated(stores, settings, concurrency=1)
    # Subscribed, and the message of the settle's enqueue still on its way (as long as
    # this test runs).
    worker.wake._indexed_at = {"default": 0}
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="noop", priority=1,
                                                        max_attempts=1)),
        WorkflowNode(name="c", after=("a",), job=NewJob(task="gated", max_attempts=1)),
        WorkflowNode(name="d", after=("b",), job=NewJob(task="gated", priority=-5,
                                                        max_attempts=1))])
    assert await worker._claim(2) == (1, None)  # a; the queue is drained
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    await worker._flush()  # a: b starts, c is queued
    await worker._settling  # c is indexed
    assert (await stores.store.get_job(ids["b"])).state is not JobState.QUEUED
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    await worker._flush()  # b: releases d
    d = await stores.store.get_job(ids["d"])
    assert d.state is JobState.QUEUED  # c first
    await _stop(worker, gate, outbound)


async def test_a_late_settle_leaves_a_lease_someone_else_took_and_stops_the_handler(
        stores, settings, monkeypatch):
    """A settle late enough that b's attempt was rescued and claimed again (another token
    holds b's lease) must not overwrite that lease: it reports b, and this worker stops
    b's handler (its outcome would be fenced off anyway)."""
    settled = _slow_settle(stores, monkeypatch)
    worker, gate, outbound = _gated(stores, settings, concurrency=2)
    listener = await _listen(worker)
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", [
        WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
        WorkflowNode(name="b", after=("a",), job=NewJob(task="gated", max_attempts=1))])
    assert await worker._claim(2) == (1, None)
    await asyncio.gather(*[h.task for h in worker.held.values() if h.task])
    await worker._flush()  # a: b starts; its lease waits for the settle
    handler = worker.held[str(ids["b"])].task
    lease_key = stores.dispatch.keys("default").lease_prefix + str(ids["b"])
    await stores.dispatch.client.set(lease_key, "someone-else", px=10_000)
    settled.set()
    await worker._settling
    assert str(ids["b"]) not in worker.held
    await asyncio.wait_for(handler, 5)  # stopped, though its gate never opened
    assert not worker.outcomes  # nothing of ours to record
    assert await stores.dispatch.client.get(lease_key) == "someone-else"
    gate.set()
    await outbound.close()
    await cancel_and_wait(listener)
