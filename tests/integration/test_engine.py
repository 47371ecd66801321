"""The engine against real PostgreSQL and Redis: dispatch order, delays, retries, fencing,
recovery from lost leases and from an emptied Redis."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec

from taskflow.models import Outcome
from taskflow.index import IndexGuard
from taskflow.states import JobState
from taskflow.worker.maintenance import Maintenance
from taskflow.worker.registry import Registry
from tests.helpers import running_worker, submit_jobs, wait_for_states, wait_until

DONE = {"succeeded", "failed", "cancelled"}


async def test_priorities_are_honoured_across_three_levels(stores, settings):
    specs = []
    for i in range(4):
        for prio in (0, 10, -10):
            specs.append({"task": "noop", "priority": prio, "payload": {"i": i}})
    ids = await submit_jobs(stores, *specs)
    settings1 = msgspec.structs.replace(
        settings, worker=msgspec.structs.replace(settings.worker, claim_batch=1))
    async with running_worker(stores, settings1, concurrency=1):
        jobs = await wait_for_states(stores, ids, {"succeeded"})
    order = sorted(jobs, key=lambda j: j.started_at)
    assert [j.priority for j in order] == [10] * 4 + [0] * 4 + [-10] * 4
    # FIFO within a priority: creation order (time-ordered ids)
    for prio in (10, 0, -10):
        same = [j.id for j in order if j.priority == prio]
        assert same == sorted(same)


async def test_delayed_job_does_not_run_early_and_runs_promptly(stores, settings):
    async with running_worker(stores, settings):
        [job_id] = await submit_jobs(stores, {"task": "noop", "delay": 1.0})
        job = await stores.store.get_job(job_id)
        assert job.state is JobState.SCHEDULED
        [done] = await wait_for_states(stores, [job_id], {"succeeded"})
    assert done.started_at >= done.run_at
    assert done.run_at - done.created_at >= timedelta(seconds=1.0)
    # Pushed wake-ups and a timed wait for the due job: no poll interval in between.
    assert done.started_at - done.run_at < timedelta(seconds=0.5)


async def test_retry_then_succeed(stores, settings):
    [job_id] = await submit_jobs(stores, {"task": "fail", "payload": {"times": 2},
                                          "max_attempts": 3})
    async with running_worker(stores, settings):
        [job] = await wait_for_states(stores, [job_id], {"succeeded"})
    assert job.attempts == 3
    assert job.result == {"succeeded_on_attempt": 3}
    attempts = await stores.store.job_attempts(job_id)
    assert [a.outcome for a in attempts] == ["retried", "retried", "succeeded"]
    assert "failed on purpose (attempt 1)" in attempts[0].error


async def test_retries_exhausted_ends_failed_with_attempts_recorded(stores, settings):
    [job_id] = await submit_jobs(stores, {"task": "fail", "payload": {"message": "boom"},
                                          "max_attempts": 3})
    async with running_worker(stores, settings):
        [job] = await wait_for_states(stores, [job_id], {"failed"})
    assert job.attempts == 3 and job.finished_at is not None
    assert "boom (attempt 3)" in job.error
    attempts = await stores.store.job_attempts(job_id)
    assert [a.outcome for a in attempts] == ["retried", "retried", "failed"]
    assert [a.attempt for a in attempts] == [1, 2, 3]


async def test_non_retryable_error_fails_at_once(stores, settings):
    [job_id] = await submit_jobs(stores, {"task": "fail", "max_attempts": 5,
                                          "payload": {"retryable": False, "message": "bad"}})
    async with running_worker(stores, settings):
        [job] = await wait_for_states(stores, [job_id], {"failed"})
    assert job.attempts == 1 and "bad" in job.error


async def test_stale_worker_cannot_write_after_its_lease_was_taken_over(stores, settings):
    [job_id] = await submit_jobs(stores, {"task": "noop"})
    store, dispatch = stores.store, stores.dispatch
    # Worker A claims and starts the job, then freezes.
    claim_a = (await dispatch.claim("default", 1, lease_ms=100)).claims
    [started_a] = await store.start_jobs(claim_a, "worker-a")
    await asyncio.sleep(0.2)  # A's lease expires
    maintenance = Maintenance(settings, store, dispatch, ["default"])
    assert await maintenance.reap_once() == 1
    # Worker B takes the job over and succeeds.
    claim_b = (await dispatch.claim("default", 1, lease_ms=10_000)).claims
    assert [c.id for c in claim_b] == [str(job_id)]
    [started_b] = await store.start_jobs(claim_b, "worker-b")
    assert started_b.attempts == 2
    done_b = Outcome(started_b.id, started_b.lease_token, JobState.SUCCEEDED, "succeeded",
                     0.01, result='"from b"')
    assert len(await store.finish_jobs([done_b])) == 1
    # A wakes up and tries to record its own outcome: refused, B's outcome stands.
    done_a = Outcome(started_a.id, started_a.lease_token, JobState.FAILED, "failed", 5.0,
                     error="late")
    assert await store.finish_jobs([done_a]) == []
    job = await store.get_job(job_id)
    assert job.state is JobState.SUCCEEDED and job.result == "from b" and job.error is None
    attempts = await store.job_attempts(job_id)
    assert [(a.attempt, a.outcome, a.worker) for a in attempts] == [
        (1, "lost", "worker-a"), (2, "succeeded", "worker-b")]


async def test_redis_flushall_loses_no_queued_or_delayed_job(stores, settings, redis_client):
    ids = await submit_jobs(stores, *[{"task": "noop"} for _ in range(20)])
    ids += await submit_jobs(stores, *[{"task": "noop", "delay": 1.0} for _ in range(5)])
    assert sum(await stores.dispatch.depth("default")) == 25
    await redis_client.flushall()
    assert sum(await stores.dispatch.depth("default")) == 0
    async with running_worker(stores, settings):
        jobs = await wait_for_states(stores, ids, {"succeeded"})
    assert all(j.attempts == 1 for j in jobs)


async def test_committed_job_whose_enqueue_failed_is_indexed_by_the_reconciler(stores, settings):
    # As if the API committed the job and then lost Redis before its ZADD.
    from taskflow.models import NewJob

    result = await stores.store.insert_jobs([NewJob(task="noop", max_attempts=1)])
    [entry] = result.created
    await IndexGuard(stores.store, stores.dispatch).check()  # marked, however it stood  # Redis is otherwise intact
    assert sum(await stores.dispatch.depth("default")) == 0
    maintenance = Maintenance(settings, stores.store, stores.dispatch, ["default"])
    assert await maintenance.reconcile() == 1
    assert await stores.dispatch.depth("default") == (1, 0, 0)
    assert await maintenance.reconcile() == 0  # idempotent: indexed jobs are left alone
    async with running_worker(stores, settings, maintenance=False):
        await wait_for_states(stores, [entry.id], {"succeeded"})


async def test_long_job_is_not_rerun_because_it_outlives_its_lease(stores, settings):
    # lease_ttl is 2s in tests; the heartbeat keeps extending it.
    [job_id] = await submit_jobs(stores, {"task": "sleep", "payload": {"seconds": 3.0}})
    async with running_worker(stores, settings):
        [job] = await wait_for_states(stores, [job_id], {"succeeded"}, timeout=20)
    assert job.attempts == 1
    assert [a.outcome for a in await stores.store.job_attempts(job_id)] == ["succeeded"]


async def test_two_workers_never_run_the_same_attempt_at_once(stores, settings):
    registry = Registry()
    running: set[str] = set()
    overlaps: list[str] = []
    runs: dict[str, int] = {}

    @registry.task("track")
    async def track(ctx):
        key = str(ctx.job_id)
        if key in running:
            overlaps.append(key)
        running.add(key)
        runs[key] = runs.get(key, 0) + 1
        await asyncio.sleep(0.002)
        running.discard(key)

    ids = await submit_jobs(stores, *[{"task": "track"} for _ in range(400)])
    async with running_worker(stores, settings, registry), \
            running_worker(stores, settings, registry):
        jobs = await wait_for_states(stores, ids, {"succeeded"}, timeout=30)
    assert overlaps == []
    assert set(runs.values()) == {1} and len(runs) == 400
    assert all(j.attempts == 1 for j in jobs)
    assert len({j.worker for j in jobs}) == 2  # both workers took part


async def test_bad_jobs_end_their_attempt_and_the_worker_goes_on(stores, settings):
    registry = Registry()

    class Custom(BaseException):
        pass

    @registry.task("raises_base")
    async def raises_base(ctx):
        raise Custom("not an Exception")

    @registry.task("bad_result")
    async def bad_result(ctx):
        return {"x": object()}

    @registry.task("hangs")
    async def hangs(ctx):
        await asyncio.sleep(3600)

    @registry.task("sync_ok")
    def sync_ok(ctx):
        return {"thread": True, "got": ctx.payload}

    @registry.task("exits")
    async def exits(ctx):
        raise SystemExit(3)

    ids = await submit_jobs(
        stores,
        {"task": "nobody-knows-me", "max_attempts": 1},
        {"task": "sleep", "payload": {"seconds": "soon"}, "max_attempts": 3},
        {"task": "raises_base", "max_attempts": 1},
        {"task": "bad_result", "max_attempts": 3},
        {"task": "hangs", "timeout": 0.2, "max_attempts": 2},
        {"task": "exits", "max_attempts": 1},
        {"task": "sync_ok", "payload": {"a": 1}},
        {"task": "echo", "payload": [1, 2, 3]},
    )
    async with running_worker(stores, settings, registry):
        jobs = await wait_for_states(stores, ids, DONE, timeout=20)
    by_task = {j.task: j for j in jobs}
    assert "no handler is registered for task 'nobody-knows-me'" in by_task["nobody-knows-me"].error
    assert by_task["sleep"].state is JobState.FAILED and by_task["sleep"].attempts == 1
    assert "payload rejected by task 'sleep'" in by_task["sleep"].error
    assert "Custom: not an Exception" in by_task["raises_base"].error
    assert by_task["bad_result"].attempts == 1
    assert "cannot be stored as JSON" in by_task["bad_result"].error
    assert by_task["hangs"].attempts == 2 and "timed out after 0.2s" in by_task["hangs"].error
    assert "SystemExit" in by_task["exits"].error
    assert by_task["sync_ok"].result == {"thread": True, "got": {"a": 1}}
    assert by_task["echo"].result == [1, 2, 3]
    assert all(j.state is JobState.FAILED for t, j in by_task.items()
               if t not in ("sync_ok", "echo"))


async def test_idempotency_key_returns_the_first_job(stores):
    from taskflow.models import NewJob

    first = await stores.store.insert_jobs(
        [NewJob(task="noop", max_attempts=1, idempotency_key="k1", tenant="t1")])
    again = await stores.store.insert_jobs(
        [NewJob(task="echo", max_attempts=1, idempotency_key="k1", tenant="t1"),
         NewJob(task="noop", max_attempts=1, idempotency_key="k1", tenant="t2")])
    assert len(first.created) == 1
    assert [j.id for j in again.existing] == [first.created[0].id]
    assert len(again.created) == 1  # the other tenant's key is its own


async def _running(stores, job_id):
    job = await stores.store.get_job(job_id)
    return job.state is JobState.RUNNING


async def test_running_job_stops_when_its_cancellation_is_requested(stores, settings):
    [job_id] = await submit_jobs(stores, {"task": "sleep", "payload": {"seconds": 60}})
    async with running_worker(stores, settings):
        await wait_until(lambda: _running(stores, job_id))
        # What the API does: durable flag in PostgreSQL, then the message to the worker.
        await stores.store.pool.execute(
            "UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)
        await stores.dispatch.request_cancel("default", str(job_id))
        [job] = await wait_for_states(stores, [job_id], {"cancelled"}, timeout=10)
    assert job.finished_at is not None and job.attempts == 1
    assert [a.outcome for a in await stores.store.job_attempts(job_id)] == ["cancelled"]


async def test_cancellation_missed_by_pubsub_is_found_by_the_heartbeat(stores, settings, redis_client):
    [job_id] = await submit_jobs(stores, {"task": "sleep", "payload": {"seconds": 60}})
    async with running_worker(stores, settings) as worker:
        await wait_until(lambda: _running(stores, job_id))
        # Only the marker, no message: the next heartbeat (0.5s in tests) must see it,
        # and PostgreSQL's flag (set first by every canceller) confirms it.
        await stores.store.pool.execute(
            "UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)
        keys = stores.dispatch.keys("default")
        await redis_client.set(keys.cancel_prefix + str(job_id), "1", px=60_000)
        await wait_for_states(stores, [job_id], {"cancelled"}, timeout=10)
        assert worker.held == {}


async def test_failed_attempt_of_a_job_with_a_cancel_request_ends_cancelled(stores, settings):
    # The worker never heard of the request (Redis lost it): PostgreSQL's flag still wins
    # over a retry.
    [job_id] = await submit_jobs(stores, {"task": "fail", "max_attempts": 5})
    claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
    [started] = await stores.store.start_jobs(claims, "w")
    await stores.store.pool.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1",
                                    job_id)
    retry = Outcome(started.id, started.lease_token, JobState.SCHEDULED, "retried", 0.1,
                    error="boom", delay=1.0)
    [moved] = await stores.store.finish_jobs([retry])
    assert moved.state is JobState.CANCELLED
    assert [a.outcome for a in await stores.store.job_attempts(job_id)] == ["cancelled"]


async def test_values_postgresql_refuses_fail_only_their_own_job(stores, settings):
    registry = Registry()

    @registry.task("nul_result")
    async def nul_result(ctx):
        return {"text": "a\x00b"}

    @registry.task("nul_error")
    async def nul_error(ctx):
        raise ValueError("bad\x00byte")

    @registry.task("far_retry")
    async def far_retry(ctx):
        from taskflow import RetryAfter
        raise RetryAfter(1e15)

    @registry.task("literal")
    async def literal(ctx):
        return "not a NUL: \\u0000"

    ids = await submit_jobs(
        stores,
        {"task": "nul_result"}, {"task": "nul_error", "max_attempts": 1},
        {"task": "far_retry", "max_attempts": 2}, {"task": "literal"},
        *[{"task": "echo", "payload": i} for i in range(20)])
    async with running_worker(stores, settings, registry):
        jobs = {j.id: j for j in await wait_for_states(
            stores, [i for n, i in enumerate(ids) if n != 2],
            {"succeeded", "failed"}, timeout=20)}
        far = await wait_until(lambda: _scheduled(stores, ids[2]))
    nul_result_job, nul_error_job = jobs[ids[0]], jobs[ids[1]]
    assert nul_result_job.state is JobState.FAILED and nul_result_job.attempts == 1
    assert "NUL character" in nul_result_job.error
    assert nul_error_job.state is JobState.FAILED and "bad\\x00byte" in nul_error_job.error
    assert jobs[ids[3]].result == "not a NUL: \\u0000"
    assert all(jobs[i].state is JobState.SUCCEEDED for i in ids[4:])
    assert far.run_at - far.created_at < timedelta(days=367)  # capped, not an overflow


async def _scheduled(stores, job_id):
    job = await stores.store.get_job(job_id)
    return job if job.state is JobState.SCHEDULED and job.attempts == 1 else None


async def test_an_outcome_postgresql_refuses_is_recorded_as_a_failure_alone(stores, settings):
    from taskflow.worker.builtins import builtin_registry
    from taskflow.worker.worker import Worker

    ids = await submit_jobs(stores, {"task": "noop"}, {"task": "noop"})
    claims = (await stores.dispatch.claim("default", 2, 10_000)).claims
    started = await stores.store.start_jobs(claims, "w")
    registry, outbound = builtin_registry(settings.outbound)
    worker = Worker(settings, stores.store, stores.dispatch, registry)
    bad, good = started
    outcomes = [Outcome(bad.id, bad.lease_token, JobState.SUCCEEDED, "succeeded", 0.0,
                        result='"\\u0000"'),
                Outcome(good.id, good.lease_token, JobState.SUCCEEDED, "succeeded", 0.0,
                        result='"fine"')]
    moved, started, _ = await worker._record(outcomes)
    assert started == []
    assert {e.id for e in moved} == {bad.id, good.id}
    jobs = {j.id: j for j in await stores.store.get_jobs(ids)}
    assert jobs[good.id].state is JobState.SUCCEEDED and jobs[good.id].result == "fine"
    assert jobs[bad.id].state is JobState.FAILED
    assert "outcome could not be stored" in jobs[bad.id].error
    await outbound.close()


async def test_a_cancel_request_survives_the_loss_of_the_running_worker(stores, settings):
    [job_id] = await submit_jobs(stores, {"task": "noop", "tenant": "t"})
    claims = (await stores.dispatch.claim("default", 1, lease_ms=100)).claims
    await stores.store.start_jobs(claims, "worker-a")
    assert await stores.store.request_running_job_cancel(job_id, "t") is not None
    await asyncio.sleep(0.2)  # the worker died before it heard of the request
    await Maintenance(settings, stores.store, stores.dispatch, ["default"]).reap_once()
    job = await stores.store.get_job(job_id)
    assert job.state is JobState.CANCELLED and job.finished_at is not None
    # and nothing runs it again
    assert (await stores.dispatch.claim("default", 1, 10_000)).claims == []


async def test_an_ancient_run_at_does_not_outrank_a_higher_priority(stores, settings):
    from datetime import datetime, timezone

    ancient = datetime(1, 1, 2, tzinfo=timezone.utc)
    [old_low] = await submit_jobs(stores, {"task": "noop", "priority": 0, "run_at": ancient})
    [new_high] = await submit_jobs(stores, {"task": "noop", "priority": 10})
    claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
    assert [c.id for c in claims] == [str(new_high)]


async def test_the_stores_connections_never_jit_compile(stores):
    # A JIT-enabled PostgreSQL (Debian's, RDS) compiled a fan-in lookup estimated past
    # jit_above_cost on every call: 15 ms of compiling for 0.4 ms of work (see
    # taskflow.adapters.postgres.create_pool). Every pooled connection must say off.
    async with stores.store.pool.acquire() as a, stores.store.pool.acquire() as b:
        assert [await a.fetchval("SHOW jit"), await b.fetchval("SHOW jit")] == ["off", "off"]
