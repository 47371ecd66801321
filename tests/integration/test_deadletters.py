"""Redrive against real PostgreSQL and Redis: fresh budgets, DAG descendants released,
paging through large redrives."""

from __future__ import annotations

from taskflow import deadletters
from taskflow.adapters.outbox import DeadLetterQuery
from taskflow.jobs import submit
from taskflow.models import NewJob
from taskflow.worker.registry import Registry
from tests.helpers import running_worker, submit_jobs, wait_for_states
from tests.integration.outbox_helpers import outbox_rows

DONE = {"succeeded", "failed", "cancelled"}


def flaky_registry(state: dict) -> Registry:
    """`flaky` fails while state["fail"] is true."""
    registry = Registry()

    @registry.task("flaky")
    async def flaky(ctx):
        if state["fail"]:
            raise RuntimeError("still broken")
        return "fixed"

    return registry


async def test_redrive_releases_cancelled_descendants(stores, settings, outbox):
    state = {"fail": True}
    registry = flaky_registry(state)
    [up] = await submit_jobs(stores, {"task": "flaky", "max_attempts": 2})
    [mid] = await submit_jobs(stores, {"task": "noop", "depends_on": (up,)})
    [leaf] = await submit_jobs(stores, {"task": "noop", "depends_on": (mid,)})
    async with running_worker(stores, settings, registry):
        await wait_for_states(stores, [up], {"failed"})
        await wait_for_states(stores, [mid, leaf], {"cancelled"})
        state["fail"] = False
        done = await deadletters.redrive_ids(outbox, stores.store, stores.dispatch, "default",
                                             [up, mid])
        assert (done.matched, done.ids) == (1, [up])  # mid is cancelled, not a dead letter
        jobs = await wait_for_states(stores, [up, mid, leaf], {"succeeded"})
    by_id = {j.id: j for j in jobs}
    assert (by_id[up].attempts, by_id[up].max_attempts, by_id[up].attempt_base) == (3, 4, 2)
    assert [a.outcome for a in await stores.store.job_attempts(up)] == [
        "retried", "failed", "succeeded"]


async def test_repeated_redrives_each_grant_the_jobs_own_budget(stores, settings, outbox):
    [job_id] = await submit_jobs(stores, {"task": "fail", "max_attempts": 2})
    async with running_worker(stores, settings):
        for n in (2, 4, 6):
            [job] = await wait_for_states(stores, [job_id], {"failed"})
            assert (job.attempts, job.max_attempts) == (n, n)
            if n < 6:
                await deadletters.redrive_ids(outbox, stores.store, stores.dispatch,
                                              "default", [job_id])
                await wait_for_states(stores, [job_id], {"queued", "running", "scheduled"})


async def test_large_redrive_goes_page_by_page(stores, settings, outbox):
    jobs = [NewJob(task="fail", max_attempts=1, queue=q) for q in ("a", "b") for _ in range(650)]
    await submit(stores.store, stores.dispatch, jobs)
    # Fail them in PostgreSQL directly: the subject here is the redrive, not the worker.
    await stores.store.pool.execute(
        "UPDATE jobs SET state = 'failed', attempts = 1, finished_at = now(), error = 'x'")
    await stores.dispatch.client.flushdb()
    await stores.store.pool.execute("UPDATE jobs SET tenant = 'other' WHERE id = $1",
                                    jobs[0].id)
    statements = []
    real = outbox.redrive

    async def counting(ids, tenant):
        statements.append(len(ids))
        return await real(ids, tenant)

    outbox.redrive = counting
    dry = await deadletters.redrive_matching(outbox, stores.dispatch, "default",
                                             DeadLetterQuery(), 2000, dry_run=True)
    assert dry.matched == 1299 and statements == []
    done = await deadletters.redrive_matching(outbox, stores.dispatch, "default",
                                              DeadLetterQuery(queue="a"), 1000, page=200)
    assert done.matched == 649 and len(done.ids) == 649
    assert statements == [200, 200, 200, 49]
    assert sum(await stores.dispatch.depth("a")) == 649
    assert sum(await stores.dispatch.depth("b")) == 0
    states = await stores.store.pool.fetch(
        "SELECT queue, state, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2")
    assert [tuple(r) for r in states] == [("a", "queued", 649), ("a", "failed", 1),
                                          ("b", "failed", 650)]
    assert await outbox_rows(outbox) == []
