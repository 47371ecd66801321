"""The group commit when PostgreSQL is slow (issue 10, item 2): a bounded queue of waiting
submits, a 503 only for jobs that were never sent, and never one for a job that was
created."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from taskflow.api.app import known_tasks
from taskflow.api.errors import Unavailable
from taskflow.api.submit import Submitter
from taskflow.models import NewJob


def _submitter(stores, settings, **api) -> Submitter:
    cfg = msgspec.structs.replace(
        settings,
        # one INSERT in flight at a time
        api=msgspec.structs.replace(settings.api, group_commits=1, **api),
    )
    return Submitter(cfg, stores, known_tasks(cfg))


@contextlib.asynccontextmanager
async def _jobs_locked(stores) -> AsyncIterator[None]:
    """PostgreSQL stalls every INSERT into jobs until the block ends."""
    conn = await stores.store.pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        await tx.rollback()
        await stores.store.pool.release(conn)


async def _count(stores) -> int:
    return await stores.store.pool.fetchval("SELECT count(*) FROM jobs")


async def test_a_submit_that_times_out_before_it_is_sent_is_never_created(stores, settings):
    submitter = _submitter(stores, settings, backend_timeout=0.5)
    async with _jobs_locked(stores):
        sent = asyncio.create_task(submitter.submit_one(NewJob(task="noop", max_attempts=1)))
        await asyncio.sleep(0.05)  # its INSERT is out, and stalls
        with pytest.raises(Unavailable) as waited:
            await asyncio.wait_for(submitter.submit_one(NewJob(task="noop", max_attempts=1)), 5)
        assert "was not created" in waited.value.detail
        await asyncio.sleep(0.6)  # past the first one's deadline too
    # The first one's INSERT was sent before its deadline: it answers with the job.
    created, out = await sent
    assert created and out.state.value == "queued"
    await submitter.close()
    assert await _count(stores) == 1  # the second was dropped, never sent


async def test_submits_beyond_the_pending_bound_are_shed_at_once(stores, settings):
    submitter = _submitter(stores, settings, max_pending_submits=3, backend_timeout=30)
    async with _jobs_locked(stores):
        first = asyncio.create_task(submitter.submit_one(NewJob(task="noop", max_attempts=1)))
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(submitter.submit_one(NewJob(task="noop",
                                                                    max_attempts=1)))
                   for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable) as shed:
            await asyncio.wait_for(submitter.submit_one(NewJob(task="noop", max_attempts=1)), 5)
        assert "api.max_pending_submits" in shed.value.detail
        assert shed.value.headers["Retry-After"]
    answers = await asyncio.gather(first, *waiting)
    assert all(created for created, _ in answers)
    await submitter.close()
    assert await _count(stores) == 4


async def test_a_submit_whose_caller_went_away_is_not_sent(stores, settings):
    submitter = _submitter(stores, settings, backend_timeout=30)
    async with _jobs_locked(stores):
        first = asyncio.create_task(submitter.submit_one(NewJob(task="noop", max_attempts=1)))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(submitter.submit_one(NewJob(task="noop", max_attempts=1)))
        await asyncio.sleep(0.05)
        gone.cancel()  # the client disconnected while its submit waited
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    await first
    await submitter.close()
    assert await _count(stores) == 1


async def test_http_batch_and_workflow_are_not_answered_503_after_their_commit(
    stores, settings
):
    # The write endpoints used to run under a deadline that could fire after the commit
    # (while Redis was being told, or PostgreSQL was slow to answer): a 503 for jobs that
    # exist, and a client retrying it made duplicates. Only the stores' own timeouts bound
    # them now.
    import httpx
    import jwt

    from taskflow.api.app import create_app

    cfg = msgspec.structs.replace(
        settings, jwt_secret="s" * 32,
        api=msgspec.structs.replace(settings.api, backend_timeout=0.2))
    headers = {"Authorization": "Bearer " + jwt.encode(
        {"tenant": "t", "scope": "tasks:read tasks:write", "sub": "x",
         "exp": int(time.time()) + 600}, "s" * 32,
        algorithm="HS256")}
    transport = httpx.ASGITransport(app=create_app(cfg, stores))  # in this event loop
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        async with _jobs_locked(stores):
            batch = asyncio.create_task(client.post(
                "/tasks/batch", headers=headers,
                json={"tasks": [{"task": "noop"}] * 3}))
            flow = asyncio.create_task(client.post(
                "/workflows", headers=headers,
                json={"name": "w", "jobs": [{"name": "a", "task": "noop"}]}))
            await asyncio.sleep(0.5)  # well past backend_timeout
        answers = [await batch, await flow]
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    assert await _count(stores) == 4


async def test_close_waits_for_the_commits_it_lets_start_and_leaves_no_timer(
        stores, settings):
    # close() awaited the group commits in flight when it was called, but a commit that
    # ends sends the submits waiting behind it in a new one, which close() did not wait
    # for (it ran on against stores about to close). And the expiry timer it cancelled
    # stayed set, so that no later submit ever had one.
    submitter = _submitter(stores, settings, backend_timeout=30)
    async with _jobs_locked(stores):
        first = asyncio.create_task(submitter.submit_one(NewJob(task="noop", max_attempts=1)))
        await asyncio.sleep(0.05)  # its INSERT is out, and stalls
        second = asyncio.create_task(submitter.submit_one(NewJob(task="noop", max_attempts=1)))
        await asyncio.sleep(0.05)  # waiting behind it
        closing = asyncio.create_task(submitter.close())
        await asyncio.sleep(0.05)
    await asyncio.wait_for(closing, 10)
    assert not submitter._tasks, "close() returned with a group commit still running"
    assert submitter._expiry is None
    assert [created for created, _ in await asyncio.gather(first, second)] == [True, True]


async def test_a_group_commit_logs_under_no_callers_tenant(stores, settings):
    # A group commit holds the jobs of many tenants, but its task was started from the
    # request that flushed it, and so logged with that request's tenant (and every commit
    # started after it, from its own finally, with the same one).
    from taskflow import logs

    submitter = _submitter(stores, settings, backend_timeout=30)
    seen = []
    insert = submitter._insert

    async def watched(jobs):
        seen.append(logs.context().get("tenant"))
        return await insert(jobs)

    submitter._insert = watched

    async def submit(tenant: str):
        logs.bind(tenant=tenant)  # as the API does for the request's task
        return await submitter.submit_one(NewJob(task="noop", max_attempts=1, tenant=tenant))

    async with _jobs_locked(stores):
        first = asyncio.create_task(submit("a"))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(submit(t)) for t in ("b", "c")]
        await asyncio.sleep(0.05)
    await asyncio.gather(first, *rest)
    await submitter.close()
    assert seen == [None, None], seen  # two commits: a's, then b's and c's
