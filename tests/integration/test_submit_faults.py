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
    answer = submitter._answer

    async def watched(batch):
        seen.append(logs.context().get("tenant"))
        return await answer(batch)

    submitter._answer = watched

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


async def _behind_a_stalled_commit(submitter, stores, jobs: list[NewJob]) -> list:
    """Submit ``jobs`` while a first submit's INSERT stalls, so that they all go in the
    one group commit after it; their answers (or exceptions), in order."""
    async with _jobs_locked(stores):
        first = asyncio.create_task(submitter.submit_one(NewJob(task="noop", max_attempts=1)))
        await asyncio.sleep(0.05)  # its INSERT is out, and stalls
        tasks = [asyncio.create_task(submitter.submit_one(j)) for j in jobs]
        await asyncio.sleep(0.05)  # all waiting behind it
    await first
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    await submitter.close()
    return answers


async def test_a_tenant_over_its_quota_fails_only_its_own_submits_in_a_group_commit(
        stores, settings, servers):
    # A batch that broke a tenant's quota failed as a whole and then went again as single
    # inserts, each counted alone (so a tenant's submits committed together all passed a
    # quota they broke together), all at once.
    from taskflow.api.quotas import QuotaExceeded
    from tests.conftest import make_settings

    cfg = make_settings(servers, queues=["default", "shared"],
                        queue_limits={"shared": {"max_active": 2}})
    submitter = _submitter(stores, cfg, backend_timeout=30)
    jobs = [NewJob(task="noop", max_attempts=1, queue="shared", tenant=t)
            for t in ("a", "b", "a", "a", "b", "a")]
    answers = await _behind_a_stalled_commit(submitter, stores, jobs)
    refused = [isinstance(a, QuotaExceeded) for a in answers]
    assert refused == [False, False, False, True, False, True], answers
    assert all(a[0] for a, r in zip(answers, refused) if not r)
    assert "this tenant has 2 unfinished jobs in queue 'shared'; at most 2" in \
        answers[3].detail
    assert await stores.store.pool.fetch(
        "SELECT tenant, count(*) FROM jobs WHERE queue = 'shared' GROUP BY 1 ORDER BY 1"
    ) == [("a", 2), ("b", 2)]


async def test_a_submit_that_breaks_the_shared_insert_fails_alone_in_a_few_statements(
        stores, settings, monkeypatch):
    # Such a batch went again as one INSERT per submit, all at once: up to 5,000 holding
    # every pooled connection while the submits behind them waited for their turn.
    import asyncpg

    import taskflow.api.submit as submit_module

    calls, inflight, most = [], 0, 0
    real = submit_module.submit

    async def counted(store, dispatch, jobs):
        nonlocal inflight, most
        calls.append(len(jobs))
        inflight += 1
        most = max(most, inflight)
        try:
            return await real(store, dispatch, jobs)
        finally:
            inflight -= 1

    monkeypatch.setattr(submit_module, "submit", counted)
    submitter = _submitter(stores, settings, backend_timeout=30)
    jobs = [NewJob(task="noop", max_attempts=1) for _ in range(64)]
    # Past the API's own checks (it refuses a NUL), not past PostgreSQL's: jsonb cannot
    # hold \u0000.
    jobs[37] = NewJob(task="noop", max_attempts=1, payload={"text": "a\x00b"})
    answers = await _behind_a_stalled_commit(submitter, stores, jobs)
    assert isinstance(answers[37], asyncpg.DataError), answers[37]
    assert all(a[0] for i, a in enumerate(answers) if i != 37), answers
    assert await _count(stores) == 64  # the stalled first one and 63 of these
    assert most == 1, "the halves went at once"
    assert calls[:2] == [1, 64] and len(calls) <= 2 + 2 * 6, calls


async def test_a_submit_whose_answer_cannot_be_made_is_answered_with_the_error(
        stores, settings, monkeypatch):
    # Only an ApiError from making an answer was given to its request; anything else
    # left that submit and the rest of its batch waiting for ever.
    from taskflow.api import submit as submit_module

    jobs = [NewJob(task="noop", max_attempts=1) for _ in range(3)]
    real = submit_module._Answers.of

    def of(self, job):
        if job.id == jobs[1].id:
            raise RuntimeError("cannot make this answer")
        return real(self, job)

    monkeypatch.setattr(submit_module._Answers, "of", of)
    submitter = _submitter(stores, settings, backend_timeout=30)
    answers = await asyncio.wait_for(_behind_a_stalled_commit(submitter, stores, jobs), 10)
    assert isinstance(answers[1], RuntimeError)
    assert answers[0][0] and answers[2][0]


async def test_idempotent_replays_in_a_group_commit_take_no_room_from_the_quota(
        stores, settings, servers):
    # Every submit in the batch took one place of its tenant's room, replays too (of a
    # job that exists, or of one earlier in the same batch): they create nothing, yet a
    # new job behind them was refused 429 although the tenant had room for it.
    from tests.conftest import make_settings

    cfg = make_settings(servers, queues=["default", "shared"],
                        queue_limits={"shared": {"max_active": 3}})
    submitter = _submitter(stores, cfg, backend_timeout=30)
    created, first = await submitter.submit_one(
        NewJob(task="noop", max_attempts=1, queue="shared", tenant="a", idempotency_key="k"))
    assert created  # the tenant has room for 2 more
    jobs = [NewJob(task="noop", max_attempts=1, queue="shared", tenant="a", **kw)
            for kw in ({"idempotency_key": "k"}, {"idempotency_key": "d"},
                       {"idempotency_key": "d"}, {})]
    answers = await _behind_a_stalled_commit(submitter, stores, jobs)
    assert all(isinstance(a, tuple) for a in answers), answers
    assert answers[0] == (False, first)
    assert sorted([answers[1][0], answers[2][0]]) == [False, True]
    assert answers[1][1].id == answers[2][1].id
    assert answers[3][0]
    assert await stores.store.pool.fetchval(
        "SELECT count(*) FROM jobs WHERE tenant = 'a' AND queue = 'shared'") == 3


async def test_a_batch_that_fails_after_its_commit_answers_every_job_it_created(
        stores, settings, monkeypatch):
    # An error past the INSERT's commit that is not PostgreSQL or Redis being away (here
    # in the idempotency lookup that follows it) made the group commit halve the batch
    # and send the halves again with the same ids: each failed on the primary key and
    # was answered 500, for jobs that exist (a client retrying without a key would make
    # them twice).
    from taskflow.adapters.postgres import PostgresStore

    real, broke = PostgresStore._with_existing, []

    async def with_existing(self, jobs, rows):
        if len(jobs) > 1 and not broke:
            broke.append(len(jobs))
            raise RuntimeError("past the commit")
        return await real(self, jobs, rows)

    monkeypatch.setattr(PostgresStore, "_with_existing", with_existing)
    submitter = _submitter(stores, settings, backend_timeout=30)
    jobs = [NewJob(task="noop", max_attempts=1) for _ in range(8)]
    answers = await asyncio.wait_for(_behind_a_stalled_commit(submitter, stores, jobs), 10)
    assert broke == [8]
    assert all(not isinstance(a, BaseException) and a[0] for a in answers), answers
    assert [a[1].id for a in answers] == [j.id for j in jobs]
    assert await _count(stores) == 9  # the stalled first one and these 8, once each


async def test_an_id_taken_is_not_taken_for_created_unless_these_jobs_were_sent_before(
        stores):
    """The converse of the test above (review): a batch only partly in the table, or an
    id another tenant's job has, must fail on the primary key as before, not be answered
    as created while its other jobs were never written."""
    import asyncpg

    [a] = (await stores.store.insert_jobs([NewJob(task="noop", max_attempts=1)])).created
    again = NewJob(task="noop", max_attempts=1, id=a.id)
    b = NewJob(task="noop", max_attempts=1)
    with pytest.raises(asyncpg.UniqueViolationError):
        await stores.store.insert_jobs([again, b])  # b was never sent
    theirs = NewJob(task="other", max_attempts=1, tenant="beta", id=a.id)
    with pytest.raises(asyncpg.UniqueViolationError):
        await stores.store.insert_jobs([theirs])
    assert await _count(stores) == 1
    # The same jobs again (what the group commit's halving does): answered as created.
    result = await stores.store.insert_jobs([again])
    assert [e.id for e in result.created] == [a.id]
