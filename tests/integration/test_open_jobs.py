"""Migration 0010: the update that ends a job writes no index entry of jobs (a HOT update),
and open_jobs / job_ends, kept by triggers, answer what the finished_at indexes did:
which jobs are unfinished, and which ended when. Against real PostgreSQL and Redis."""

from __future__ import annotations

from datetime import timedelta

from taskflow.adapters.outbox import OutboxStore
from taskflow.adapters.overview import OverviewStore
from taskflow.adapters.postgres import _outcome_columns
from taskflow.adapters.sql import QUERIES
from taskflow.jobs import submit_workflow
from taskflow.models import NewJob, WorkflowNode
from taskflow.states import JobState
from tests.helpers import outcome_of, start_claimed, submit_jobs

CONSISTENT = """
SELECT (SELECT array_agg(id ORDER BY id) FROM jobs WHERE finished_at IS NULL)
           IS NOT DISTINCT FROM (SELECT array_agg(id ORDER BY id) FROM open_jobs)
"""


async def _ends(stores, job_id) -> int:
    return await stores.store.pool.fetchval(
        "SELECT count(*) FROM job_ends WHERE job_id = $1", job_id)


async def test_ending_jobs_is_a_hot_update_and_leaves_open_jobs(stores):
    ids = await submit_jobs(stores, *[{"task": "noop"} for _ in range(20)])
    opened = await stores.store.pool.fetch(
        "SELECT id, tenant, queue FROM open_jobs WHERE id = ANY($1::uuid[])", ids)
    assert {r["id"] for r in opened} == set(ids)
    running = await start_claimed(stores, 20)
    assert await stores.store.pool.fetchval(
        "SELECT count(*) FROM open_jobs WHERE id = ANY($1::uuid[])", ids) == 20
    outcomes = [outcome_of(j, JobState.SUCCEEDED if i % 2 else JobState.FAILED)
                for i, j in enumerate(running)]
    counts = ("SELECT pg_stat_get_xact_tuples_updated('jobs'::regclass), "
              "pg_stat_get_xact_tuples_hot_updated('jobs'::regclass)")
    async with stores.store.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(counts)
        await conn.fetch(QUERIES["finish_jobs"], *_outcome_columns(outcomes))
        after = await conn.fetchrow(counts)
    # Every one of the 20 row updates that ended a job was HOT.
    assert (after[0] - before[0], after[1] - before[1]) == (20, 20)
    assert await stores.store.pool.fetchval(
        "SELECT count(*) FROM open_jobs WHERE id = ANY($1::uuid[])", ids) == 0
    ends = await stores.store.pool.fetch(
        "SELECT e.job_id, e.tenant, e.finished_at = j.finished_at AS same FROM job_ends AS e "
        "JOIN jobs AS j ON j.id = e.job_id WHERE e.job_id = ANY($1::uuid[])", ids)
    assert sorted(r["job_id"] for r in ends) == sorted(ids)
    assert all(r["same"] and r["tenant"] == "default" for r in ends)
    assert await stores.store.pool.fetchval(CONSISTENT)


async def test_a_redriven_job_is_open_again_and_its_last_end_counts_once(stores):
    [job_id] = await submit_jobs(stores, {"task": "noop", "max_attempts": 1})
    claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
    [job] = await stores.store.start_jobs(claims, "w")
    await stores.store.finish_jobs([outcome_of(job, JobState.FAILED)])
    await stores.dispatch.release("default", claims)
    assert await _ends(stores, job_id) == 1
    redriven = await OutboxStore(stores.store.pool).redrive([job_id], "default")
    assert [e.id for e in redriven] == [job_id]
    await stores.dispatch.reindex(redriven)
    assert await stores.store.pool.fetchval(
        "SELECT count(*) FROM open_jobs WHERE id = $1", job_id) == 1
    assert await stores.store.pool.fetchval(CONSISTENT)
    [again] = await start_claimed(stores, 1)
    await stores.store.finish_jobs([outcome_of(again)])
    assert await _ends(stores, job_id) == 2  # one row per end
    ended = await stores.store.get_job(job_id)
    overview = OverviewStore(stores.store.pool)
    window = (ended.finished_at - timedelta(minutes=5), ended.finished_at + timedelta(minutes=1))
    minute = ended.finished_at.replace(second=0, microsecond=0)
    for tenant in (None, "default"):
        rows = await overview.finished_by_minute(tenant, *window)
        # The database holds this job alone: its last end, once, as it ended then.
        assert [(r.queue, r.minute, r.state, r.n) for r in rows] == [
            ("default", minute, "succeeded", 1)]
    assert await overview.finished_by_minute("someone-else", *window) == []


async def test_a_release_over_a_cancelled_dependent_records_no_second_end(stores):
    nodes = [WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
             WorkflowNode(name="b", job=NewJob(task="noop", max_attempts=1)),
             WorkflowNode(name="c", after=("a", "b"), job=NewJob(task="noop", max_attempts=1))]
    _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
    running = {j.id: j for j in await start_claimed(stores, 2)}
    await stores.store.finish_jobs([outcome_of(running[ids["b"]], JobState.FAILED)])
    assert (await stores.store.get_job(ids["c"])).state is JobState.CANCELLED
    assert await _ends(stores, ids["c"]) == 1
    # a's success passes over c, cancelled already: c stays cancelled, ended once.
    await stores.store.finish_and_start([outcome_of(running[ids["a"]])], ["default"], 1,
                                        "w", "p.")
    assert await _ends(stores, ids["c"]) == 1
    assert await stores.store.pool.fetchval(
        "SELECT count(*) FROM open_jobs WHERE workflow_id = (SELECT workflow_id FROM jobs "
        "WHERE id = $1)", ids["a"]) == 0
    assert await stores.store.pool.fetchval(CONSISTENT)


async def test_a_truncate_of_jobs_empties_both(stores):
    await submit_jobs(stores, {"task": "noop"})
    await stores.store.pool.execute("TRUNCATE jobs")
    assert await stores.store.pool.fetchval(
        "SELECT (SELECT count(*) FROM open_jobs) + (SELECT count(*) FROM job_ends)") == 0


async def test_retry_cancel_and_a_job_born_cancelled_keep_both_tables_right(stores):
    [failed_id, waiting_id] = await submit_jobs(
        stores, {"task": "noop", "max_attempts": 1},
        {"task": "noop", "delay": 3600})
    claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
    [job] = await stores.store.start_jobs(claims, "w")
    assert job.id == failed_id
    await stores.store.finish_jobs([outcome_of(job, JobState.FAILED)])
    # Born cancelled: its upstream has failed already.
    [doomed_id] = await submit_jobs(stores, {"task": "noop", "depends_on": (failed_id,)})
    assert (await stores.store.get_job(doomed_id)).state is JobState.CANCELLED
    assert await _ends(stores, doomed_id) == 1
    # Cancelled while it waits.
    assert await stores.store.cancel_waiting_job(waiting_id, "default") is not None
    assert await _ends(stores, waiting_id) == 1
    assert await stores.store.pool.fetchval(CONSISTENT)
    # Retried: open again, and the dependent it doomed waits for it again.
    assert await stores.store.retry_job(failed_id, "default") is not None
    opened = await stores.store.pool.fetch(
        "SELECT id FROM open_jobs WHERE id = ANY($1::uuid[])", [failed_id, doomed_id])
    assert {r["id"] for r in opened} == {failed_id, doomed_id}
    assert await stores.store.pool.fetchval(CONSISTENT)
