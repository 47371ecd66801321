"""Faults found by the adversarial review (issue 10, items 1-4): Redis lost while jobs run,
the running-job sweep past its first page, and states nothing used to repair."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest

from taskflow import jobs
from taskflow.adapters.embedded import EmbeddedRedis, free_port
from taskflow.adapters.redis import RedisDispatch
from taskflow.runtime import Stores
from taskflow.index import IndexGuard
from taskflow.states import JobState
from taskflow.worker.maintenance import Maintenance
from tests.helpers import running_worker, submit_jobs, wait_for_states, wait_until


async def _all_running(stores: Stores, ids: list) -> bool:
    found = await stores.store.get_jobs(ids)
    return all(j.state is JobState.RUNNING for j in found)


async def test_redis_flushed_while_jobs_run_fails_none_of_them(stores, settings, redis_client):
    # Item 1: the workers are alive, so losing Redis's copy of their leases must neither
    # fail the jobs nor charge them an attempt.
    ids = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 3.0},
                                       "max_attempts": 1} for _ in range(20)])
    async with running_worker(stores, settings):
        await wait_until(lambda: _all_running(stores, ids), timeout=10)
        await redis_client.flushdb()
        done = await wait_for_states(stores, ids, {"succeeded", "failed"}, timeout=30)
    assert [j.state for j in done] == [JobState.SUCCEEDED] * 20, [j.error for j in done]
    assert all(j.attempts == 1 for j in done)
    for job_id in ids:
        assert [a.outcome for a in await stores.store.job_attempts(job_id)] == ["succeeded"]


async def test_redis_restarted_empty_while_jobs_run_fails_none_of_them(
    stores, settings, servers
):
    # Item 1, a restart rather than a flush: connections break, then Redis is back empty.
    # (In the session's folder, not tmp_path, which a concurrent pytest may prune.)
    tmp_path = servers.data_dir / f"redis-restart-{os.getpid()}"
    redis = EmbeddedRedis(tmp_path / "redis")
    dispatch = RedisDispatch.from_url(redis.url, settings.redis_prefix)
    own = Stores(stores.store, dispatch)
    try:
        ids = await submit_jobs(own, *[{"task": "sleep", "payload": {"seconds": 4.0},
                                        "max_attempts": 1} for _ in range(10)])
        async with running_worker(own, settings):
            await wait_until(lambda: _all_running(own, ids), timeout=10)
            redis.stop()
            await asyncio.sleep(1.0)
            redis = EmbeddedRedis(tmp_path / "redis", port=redis.port)
            done = await wait_for_states(own, ids, {"succeeded", "failed"}, timeout=30)
        assert [j.state for j in done] == [JobState.SUCCEEDED] * 10, [j.error for j in done]
        assert all(j.attempts == 1 for j in done)
    finally:
        await dispatch.close()
        redis.stop()


async def test_a_dead_workers_jobs_are_still_rescued_after_redis_was_flushed(
    stores, settings, redis_client
):
    # The other side of item 1: a job whose worker is really gone is rescued once a
    # live worker has had a lease's time to take its lease back.
    [job_id] = await submit_jobs(stores, {"task": "noop", "max_attempts": 3})
    claims = (await stores.dispatch.claim("default", 1, 60_000)).claims
    await stores.store.start_jobs(claims, "dead-worker")
    await redis_client.flushdb()
    async with running_worker(stores, settings):
        [job] = await wait_for_states(stores, [job_id], {"succeeded"}, timeout=20)
    assert [a.outcome for a in await stores.store.job_attempts(job_id)] == [
        "lost", "succeeded"]


async def test_the_sweep_pages_past_its_first_page_of_running_jobs(stores, settings):
    # Item 3: a lost job behind a page of older running jobs whose leases are held.
    page = 50
    cfg = msgspec.structs.replace(settings, maintenance=msgspec.structs.replace(
        settings.maintenance, sweep_batch=page))
    ids = await submit_jobs(stores, *[{"task": "noop"} for _ in range(page + 1)])
    claims = (await stores.dispatch.claim("default", page + 1, 600_000)).claims
    await stores.store.start_jobs(claims, "w")
    await stores.store.pool.execute(
        "UPDATE jobs SET started_at = now() - interval '1 hour'")
    lost = claims[-1]  # the newest id: last in the sweep's order
    keys = stores.dispatch.keys("default")
    await stores.dispatch.client.delete(keys.lease_prefix + lost.id)
    await stores.dispatch.client.zrem(keys.inflight, f"{lost.id}|{lost.token}")
    maintenance = Maintenance(cfg, stores.store, stores.dispatch, ["default"])
    await stores.dispatch.client.set(stores.dispatch.epoch_key, "0")  # an old index
    rescued = 0
    for _ in range(3):
        rescued += await maintenance.sweep_running()
    assert rescued == 1
    job = await stores.store.get_job(lost.id)
    assert job.state is JobState.QUEUED and job.attempts == 1
    assert ids[-1] == job.id


async def test_each_sweep_pass_looks_at_one_page_of_unfinished_jobs_whatever_waits(
        stores, settings):
    # Issue 11: the sweep's cost must not grow with the backlog. 120 waiting jobs older
    # than a lost running one, pages of 50: a pass reads at most 50 unfinished rows, and
    # the third pass reaches the lost job.
    page = 50
    cfg = msgspec.structs.replace(settings, maintenance=msgspec.structs.replace(
        settings.maintenance, sweep_batch=page))
    await submit_jobs(stores, *[{"task": "noop", "queue": "backlog"} for _ in range(120)])
    [job_id] = await submit_jobs(stores, {"task": "noop"})
    [lost] = (await stores.dispatch.claim("default", 1, 600_000)).claims
    await stores.store.start_jobs([lost], "w")
    await stores.store.pool.execute(
        "UPDATE jobs SET started_at = now() - interval '1 hour' WHERE id = $1", job_id)
    keys = stores.dispatch.keys("default")
    await stores.dispatch.client.delete(keys.lease_prefix + lost.id)
    await stores.dispatch.client.zrem(keys.inflight, f"{lost.id}|{lost.token}")
    await stores.dispatch.client.set(stores.dispatch.epoch_key, "0")  # an old index
    maintenance = Maintenance(cfg, stores.store, stores.dispatch, ["default"])
    # Passes 1 and 2 read the 100 oldest waiting jobs, pass 3 the other 20 and the lost one.
    assert [await maintenance.sweep_running() for _ in range(3)] == [0, 0, 1]
    job = await stores.store.get_job(job_id)
    assert job.state is JobState.QUEUED and job.attempts == 1


async def test_a_retry_whose_reindex_failed_runs_now_and_is_not_cancelled(
    stores, settings, redis_client
):
    # Item 4a: a scheduled job cancelled (its delayed entry and a cancel marker stay in
    # Redis), then retried while Redis could not be told. The reconciler indexes it: it
    # must run now, not at its old due time, and not be cancelled by the old marker.
    [job_id] = await submit_jobs(stores, {"task": "sleep", "payload": {"seconds": 1.0},
                                          "delay": 3600, "tenant": "t"})
    await jobs.cancel(stores.store, stores.dispatch, job_id, "t")
    keys = stores.dispatch.keys("default")
    await redis_client.set(keys.cancel_prefix + str(job_id), "1", px=600_000)
    # The retry's reindex fails (Redis unreachable for it): PostgreSQL has the job queued,
    # Redis still the old delayed entry and marker; the retry notes it for the reconciler.
    unreachable = RedisDispatch.from_url(f"redis://127.0.0.1:{free_port()}/0",
                                         settings.redis_prefix)
    try:
        job = await jobs.retry(stores.store, unreachable, job_id, "t")
    finally:
        await unreachable.close()
    assert job.state is JobState.QUEUED
    cfg = msgspec.structs.replace(settings, maintenance=msgspec.structs.replace(
        settings.maintenance, unconfirmed_grace=0.1))
    async with running_worker(stores, cfg):
        [done] = await wait_for_states(stores, [job_id], {"succeeded", "cancelled"},
                                       timeout=15)
    assert done.state is JobState.SUCCEEDED, done.error


async def test_retrying_a_descendant_of_a_failed_upstream_is_refused(stores, settings):
    # Item 4b: it would wait for ever on an upstream that will not run again.
    [up] = await submit_jobs(stores, {"task": "fail", "max_attempts": 1, "tenant": "t",
                                      "payload": {"retryable": False}})
    [down] = await submit_jobs(stores, {"task": "noop", "tenant": "t", "depends_on": (up,)})
    async with running_worker(stores, settings):
        await wait_for_states(stores, [up], {"failed"})
        [cancelled] = await wait_for_states(stores, [down], {"cancelled"})
    assert cancelled.cancelled_by == up
    with pytest.raises(jobs.UpstreamNotRetried) as err:
        await jobs.retry(stores.store, stores.dispatch, down, "t")
    assert err.value.upstreams == [up]
    assert (await stores.store.get_job(down)).state is JobState.CANCELLED
    # Retrying the upstream first is the way, and it releases the descendant.
    await jobs.retry(stores.store, stores.dispatch, up, "t")
    job = await stores.store.get_job(down)
    assert job.state is JobState.BLOCKED


async def test_jobs_claimed_by_a_worker_killed_before_starting_them_are_requeued(
    stores, settings
):
    # Item 4c: leased in Redis, still queued in PostgreSQL; the reaper requeues them when
    # the leases expire instead of leaving them to the reconciler's next full pass.
    ids = await submit_jobs(stores, *[{"task": "noop"} for _ in range(5)])
    claims = (await stores.dispatch.claim("default", 5, 100)).claims
    assert len(claims) == 5
    await asyncio.sleep(0.2)
    maintenance = Maintenance(settings, stores.store, stores.dispatch, ["default"])
    await IndexGuard(stores.store, stores.dispatch).check()  # marked, however it stood
    await maintenance.reap_once()
    assert (await stores.dispatch.depth("default"))[0] == 5
    async with running_worker(stores, settings, maintenance=False):
        done = await wait_for_states(stores, ids, {"succeeded"})
    assert all(j.attempts == 1 for j in done)



async def test_jobs_whose_start_failed_are_given_back_without_an_attempt(
    servers, stores, settings
):
    # PostgreSQL failed under start_jobs (here: a statement timeout behind a lock). The
    # claim had taken the jobs out of the ready set; they used to be released into no
    # set at all, waiting for the reconciler's full pass. The worker keeps their leases
    # and gives them back once PostgreSQL answers: they run, no attempt lost.
    from taskflow.runtime import open_stores

    ids = await submit_jobs(stores, *[{"task": "noop"} for _ in range(5)])
    cfg = msgspec.structs.replace(settings, database=msgspec.structs.replace(
        settings.database, command_timeout=0.5))
    async with open_stores(cfg, servers.database_url, servers.redis_url) as own:
        conn = await stores.store.pool.acquire()
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        try:
            async with running_worker(own, cfg, maintenance=False):
                await asyncio.sleep(1.5)  # start_jobs timed out at least once
                assert (await stores.dispatch.depth("default"))[0] == 0  # claimed
                await tx.rollback()
                await stores.store.pool.release(conn)
                conn = None
                done = await wait_for_states(stores, ids, {"succeeded"}, timeout=15)
        finally:
            if conn is not None:
                await tx.rollback()
                await stores.store.pool.release(conn)
    assert all(j.attempts == 1 for j in done)
    outcomes = {a.outcome for i in ids for a in await stores.store.job_attempts(i)}
    assert outcomes == {"succeeded"}
