"""Pure logic of waiting (issue 11): event derivation and ids, the waiter registry, and
the coalescing of waiters' reads (over a fake store: what is tested is the batching)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from taskflow.api.events import format_id, job_events, parse_id
from taskflow.api.watch import ChangeFeed, Coalesced
from taskflow.models import Attempt, Job
from taskflow.states import JobState

T0 = datetime(2030, 1, 1, tzinfo=UTC)
JOB_ID = uuid.UUID("01a22d0a-6f80-7148-a0f1-a9e7a9d2a744")


def _job(state: JobState, attempts: int, **fields) -> Job:
    base = dict(id=JOB_ID, tenant="t", task="fail", queue="default", payload={}, priority=0,
                run_at=T0, state=state, attempts=attempts, max_attempts=3, retry_policy=None,
                timeout=None, idempotency_key=None, labels={}, result=None, error=None,
                created_at=T0, started_at=None, finished_at=None, lease_token=None,
                worker=None, cancel_requested=False, workflow_id=None, node=None,
                upstream_count=0, pending_upstreams=0, has_dependents=False,
                cancelled_by=None)
    return Job(**{**base, **fields})


def _attempt(n: int, outcome: str = "failed") -> Attempt:
    start = T0 + timedelta(seconds=n)
    return Attempt(n, "w", start, start + timedelta(milliseconds=500), 0.5, outcome, "boom")


def _seen(job: Job, attempts: list[Attempt]) -> list[tuple[str, str]]:
    return [(format_id(k), e.state.value) for k, e in job_events(job, attempts)]


def test_a_life_observed_step_by_step_keeps_its_ids_when_replayed():
    # Each snapshot of one job's life, as a stream reading PostgreSQL would see it.
    snapshots = [
        (_job(JobState.BLOCKED, 0), []),
        (_job(JobState.QUEUED, 0), []),
        (_job(JobState.RUNNING, 1, started_at=T0), []),
        (_job(JobState.SCHEDULED, 1), [_attempt(1)]),
        (_job(JobState.RUNNING, 2), [_attempt(1)]),
        (_job(JobState.QUEUED, 2), [_attempt(1), _attempt(2, "lost")]),
        (_job(JobState.RUNNING, 3), [_attempt(1), _attempt(2, "lost")]),
        (_job(JobState.SUCCEEDED, 3, result={"ok": 1}),
         [_attempt(1), _attempt(2, "lost"), _attempt(3, "succeeded")]),
    ]
    live: dict[str, str] = {}
    for job, attempts in snapshots:
        for event_id, state in _seen(job, attempts):
            live.setdefault(event_id, state)
    assert list(live.items()) == [
        ("0.0", "blocked"), ("0.1", "queued"), ("0.2", "running"), ("1.1", "scheduled"),
        ("1.2", "running"), ("2.1", "queued"), ("2.2", "running"), ("3.3", "succeeded")]
    # The final replay has every live event but the unrecorded blocked one, same ids and
    # states, in id order.
    final = _seen(*snapshots[-1])
    assert final == [(i, s) for i, s in live.items() if i != "0.0"]
    ids = [parse_id(i) for i, _ in final]
    assert ids == sorted(ids)
    # What each id replays is what a live stream showed under that id.
    for job, attempts in snapshots:
        for event_id, state in _seen(job, attempts):
            assert live[event_id] == state
    # A stream that starts at any moment after the unrecorded blocked one shows, before
    # the current state, exactly what the final replay has before it (so a client that
    # resumes from the current state has missed nothing), the first attempt's run too.
    for job, attempts in snapshots[1:]:
        *before, (current, _) = _seen(job, attempts)
        assert before == [e for e in final if parse_id(e[0]) < parse_id(current)], job.state


def test_terminal_without_attempts_and_results():
    assert _seen(_job(JobState.CANCELLED, 0), []) == [("0.3", "cancelled")]
    [*_, (_, done)] = job_events(_job(JobState.SUCCEEDED, 1, result=[1]),
                                 [_attempt(1, "succeeded")])
    assert msgspec.json.decode(msgspec.json.encode(done))["result"] == [1]


def test_event_ids_parse_strictly():
    assert parse_id("3.2") == (3, 2) and parse_id(format_id((10, 3))) == (10, 3)
    for bad in ("", "3", "3.", ".2", "a.b", "3.4", "-1.2", "1.2.3", "\u00b2.1", "1.\u00b3"):
        assert parse_id(bad) is None, bad


class _Dispatch:
    changed_channel = "tf:changed"


def test_the_registry_wakes_by_key_and_forgets_a_waiter_that_leaves():
    feed = ChangeFeed(_Dispatch())  # type: ignore[arg-type]
    with feed.watch(["a", "b"]) as one, feed.watch(["b"]) as two:
        assert len(feed) == 2
        feed.notify("x a")
        assert one.changed.is_set() and not two.changed.is_set()
        feed.wake_all()
        assert two.changed.is_set()
    assert len(feed) == 0 and not feed._by_key


class _SlowFetch:
    def __init__(self) -> None:
        self.queries: list[list] = []
        self.release = asyncio.Event()

    async def __call__(self, keys: list[int]) -> dict[int, str]:
        self.queries.append(list(keys))
        await self.release.wait()
        return {k: f"row {k}" for k in keys if k % 2 == 0}


async def test_reads_that_arrive_together_share_a_query():
    fetch = _SlowFetch()
    reads: Coalesced[int, str] = Coalesced(fetch, max_batch=100)
    first = asyncio.create_task(reads.get(0))
    await asyncio.sleep(0)  # its query is in flight
    rest = [asyncio.create_task(reads.get(i)) for i in range(1, 250)]
    gone = asyncio.create_task(reads.get(2))
    await asyncio.sleep(0)
    gone.cancel()  # a client that gives up does not disturb the others
    fetch.release.set()
    found = await asyncio.gather(first, *rest)
    assert [len(q) for q in fetch.queries] == [1, 100, 100, 49]
    assert found == [f"row {i}" if i % 2 == 0 else None for i in range(250)]
    assert reads._reader is None and not reads._pending


async def test_a_failed_query_reaches_its_readers_and_the_next_read_works():
    calls = 0

    async def fetch(keys: list[int]) -> dict[int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("PostgreSQL went away")
        return {k: k for k in keys}

    reads: Coalesced[int, int] = Coalesced(fetch)
    with pytest.raises(ConnectionError):
        await reads.get(1)
    assert await reads.get(2) == 2
