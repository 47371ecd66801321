"""The dispatch index without passes over the backlog (issue 11): a lost index is told
from a new one by PostgreSQL's generation, and jobs whose enqueue never confirmed are
indexed in proportion to what is missing."""

from __future__ import annotations

import asyncio

import msgspec

from taskflow.index import IndexGuard
from taskflow.jobs import submit
from taskflow.models import NewJob
from taskflow.worker.maintenance import Maintenance
from tests.helpers import submit_jobs, wait_until


async def _new_deployment(stores) -> None:
    await stores.store.pool.execute("TRUNCATE dispatch_index")
    await stores.dispatch.client.flushdb()


async def test_a_worker_started_after_the_api_indexed_a_new_deployment_does_not_rebuild(
    stores, settings
):
    # What the API does at start (open_stores): claim the new deployment's index.
    await _new_deployment(stores)
    assert await IndexGuard(stores.store, stores.dispatch).check(may_rebuild=False)
    await submit_jobs(stores, *[{"task": "noop"} for _ in range(50)])
    # A worker's maintenance, later: the index is fine, nothing to rebuild.
    assert await Maintenance(settings, stores.store, stores.dispatch, ["default"]).index.check()


async def test_an_emptied_redis_is_rebuilt_once(stores, settings):
    await _new_deployment(stores)
    guard = IndexGuard(stores.store, stores.dispatch)
    assert await guard.check()
    ids = await submit_jobs(stores, *[{"task": "noop"} for _ in range(30)])
    await stores.dispatch.client.flushdb()
    # The API sees the loss but leaves the rebuild to a maintenance duty.
    assert await IndexGuard(stores.store, stores.dispatch).check(may_rebuild=False)
    assert await stores.dispatch.epoch() is None
    maintenance = Maintenance(settings, stores.store, stores.dispatch, ["default"])
    other = Maintenance(settings, stores.store, stores.dispatch, ["default"])
    assert not await maintenance.index.check()  # this one marks it and rebuilds
    assert await other.index.check()  # the next one finds it marked
    assert await maintenance.reconcile() == len(ids)


async def test_waiting_jobs_without_a_generation_are_a_lost_index(stores, settings):
    # A database from before generations (or whose Redis was emptied before any process
    # marked it): jobs wait, so the empty index cannot be complete.
    await _new_deployment(stores)
    await stores.store.insert_jobs([NewJob(task="noop", max_attempts=1)])
    assert not await IndexGuard(stores.store, stores.dispatch).check()


async def test_a_row_due_at_minus_infinity_does_not_stop_a_rebuild(stores, settings):
    # Such a due time got into PostgreSQL through the API once (run_at
    # 0001-01-01T00:00:00Z), and its entry failed every enqueue, reconciler pass and
    # rebuild that held it, with the other jobs in them.
    await _new_deployment(stores)
    ids = await submit_jobs(stores, *[{"task": "noop"} for _ in range(3)])
    await stores.store.pool.execute(
        "UPDATE jobs SET run_at = '-infinity' WHERE id = $1", ids[0])
    await stores.dispatch.client.flushdb()
    maintenance = Maintenance(settings, stores.store, stores.dispatch, ["default"])
    assert not await maintenance.index.check()
    assert await maintenance.reconcile() == len(ids)
    assert sum(await stores.dispatch.depth("default")) == len(ids)


async def test_only_unconfirmed_enqueues_are_reindexed(stores, settings):
    cfg = msgspec.structs.replace(settings, maintenance=msgspec.structs.replace(
        settings.maintenance, unconfirmed_grace=0.05))
    maintenance = Maintenance(cfg, stores.store, stores.dispatch, ["default"])
    await maintenance.index.check()
    # 200 jobs submitted normally: Redis confirmed them, nothing is left to check.
    await submit(stores.store, stores.dispatch,
                 [NewJob(task="noop", max_attempts=1) for _ in range(200)])

    async def confirmed() -> bool:
        return await stores.store.pool.fetchval("SELECT count(*) FROM jobs_unindexed") == 0

    await wait_until(confirmed, timeout=5)
    # 3 committed whose enqueue never happened (the API died, or Redis failed).
    lost = await stores.store.insert_jobs([NewJob(task="noop", max_attempts=1)
                                          for _ in range(3)])
    # Past the grace (the insert's clock is its transaction's start: with a grace of 1 ms
    # a fast machine could look before the notes were old enough, and find none).
    await asyncio.sleep(0.1)
    assert await maintenance.reconcile_unconfirmed() == 3
    ready, _, _ = await stores.dispatch.depth("default")
    assert ready == 203
    assert await stores.store.pool.fetchval("SELECT count(*) FROM jobs_unindexed") == 0
    assert await maintenance.reconcile_unconfirmed() == 0
    assert {e.id for e in lost.created} <= {
        r["id"] for r in await stores.store.pool.fetch("SELECT id FROM jobs")}


async def test_confirmed_notes_are_vacuumed_as_they_pile_up(stores):
    # Every submit writes a note in jobs_unindexed and its confirmation deletes it. A
    # bulk submit left one dead row per job there for autovacuum (a minute apart at
    # best), and the reconciler's next pass pruned them all at once, in the middle of
    # the drain it coincided with (bench_backlog: its first 10,000 jobs at ~0.6x).
    store = stores.store
    store.vacuum_notes_every = 2_000

    async def vacuums() -> int:
        return await store.pool.fetchval(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'jobs_unindexed'")

    async def settled(count: int) -> bool:
        left = await store.pool.fetchval("SELECT count(*) FROM jobs_unindexed")
        return left == 0 and await vacuums() >= count

    before = await vacuums()
    for _ in range(3):  # 3,000 confirmations: one vacuum, at 2,000
        await submit(store, stores.dispatch,
                     [NewJob(task="noop", max_attempts=1) for _ in range(1_000)])
    await wait_until(lambda: settled(before + 1))
    await asyncio.sleep(0.2)  # any further confirmation has gone by now
    assert await vacuums() == before + 1
