"""Jobs ended per minute: closed minutes are read once, a few a request, newest first,
and kept; concurrent requests share one read (taskflow.api.ended), with a store that
records what it is asked."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from taskflow.adapters.overview import Finished
from taskflow.api.ended import FILL, EndedCounts, unread_run

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
M = timedelta(minutes=1)


class Rows:
    """The finished_by_minute of a table holding ``rows``; records each read. A read
    waits for ``gate`` when one is set."""

    def __init__(self, rows: list[Finished]) -> None:
        self.rows = rows
        self.asked: list[tuple[str | None, datetime, datetime]] = []
        self.gate: asyncio.Event | None = None

    async def finished_by_minute(self, tenant, since, until):
        self.asked.append((tenant, since, until))
        if self.gate is not None:
            await self.gate.wait()
        return [r for r in self.rows if since <= r.minute < until]


def _closed_reads(store: Rows, now: datetime) -> list[tuple[datetime, datetime]]:
    """The reads of closed minutes (the open ones are read from two minutes ago on)."""
    return [(s, u) for _, s, u in store.asked if u <= now]


async def test_the_hour_fills_a_few_closed_minutes_a_request_newest_first():
    rows = [Finished("q", T0 - 50 * M, "succeeded", 5), Finished("q", T0 - 3 * M, "failed", 2),
            Finished("q", T0, "failed", 1)]
    store = Rows(rows)
    counts = EndedCounts(store)
    now = T0 + timedelta(seconds=20)
    first = await counts.last_hour("t", now)
    # The newest FILL closed minutes (before now - 2 min), then the open ones.
    assert _closed_reads(store, now) == [(T0 - 2 * M - FILL * M, T0 - 2 * M)]
    assert store.asked[-1][1] == T0 - 2 * M
    assert first.complete is False and sorted(r.n for r in first.rows) == [1, 2]

    hours = [await counts.last_hour("t", now) for _ in range(60 // FILL)]
    # 58 closed minutes, FILL a request: complete from the 12th request on.
    assert [h.complete for h in hours].index(True) == -(-58 // FILL) - 2
    assert sorted(r.n for r in hours[-1].rows) == [1, 2, 5]
    reads = _closed_reads(store, now)
    assert reads[-1][0] == T0 - 60 * M  # the minute an hour ago, last
    assert sum(((u - s) for s, u in reads), timedelta()) == 58 * M  # each minute once

    # Rows in closed minutes are not read again; rows in open ones are.
    store.rows = rows + [Finished("q", T0 - 50 * M, "succeeded", 100),
                         Finished("q", T0, "failed", 7)]
    later = await counts.last_hour("t", T0 + 3 * M)
    assert _closed_reads(store, T0 + 3 * M)[-1] == (T0 - 2 * M, T0 + M)  # newly closed
    assert later.complete is True
    assert sorted(r.n for r in later.rows) == [1, 2, 5, 7]

    # Half an hour on, the minute an hour ago has left the window.
    third = await counts.last_hour("t", T0 + 31 * M)
    assert [r for r in third.rows if r.minute < T0 - 29 * M] == []


async def test_concurrent_requests_share_one_read_and_a_cancelled_one_keeps_its_progress():
    store = Rows([Finished("q", T0 - 3 * M, "succeeded", 4)])
    store.gate = asyncio.Event()
    counts = EndedCounts(store)
    now = T0 + timedelta(seconds=20)
    callers = [asyncio.create_task(counts.last_hour("t", now)) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert len(store.asked) == 1  # one read for the five
    with pytest.raises(TimeoutError):  # one caller's deadline passes...
        async with asyncio.timeout(0.01):
            await counts.last_hour("t", now)
    callers[0].cancel()
    store.gate.set()
    answers = await asyncio.gather(*callers[1:])
    assert all(a.rows == answers[0].rows and a.rows[0].n == 4 for a in answers)
    assert len(_closed_reads(store, now)) == 1  # ...the shared read went on, and is kept
    await counts.last_hour("t", now)
    assert _closed_reads(store, now)[1][1] == T0 - 2 * M - FILL * M  # the next FILL


async def test_a_failed_read_fails_its_callers_and_the_next_request_reads_again():
    class Broken(Rows):
        async def finished_by_minute(self, tenant, since, until):
            self.asked.append((tenant, since, until))
            raise OSError("database gone")

    counts = EndedCounts(Broken([]))
    with pytest.raises(OSError):
        await counts.last_hour("t", T0)
    with pytest.raises(OSError):
        await counts.last_hour("t", T0)
    assert len(counts.store.asked) == 2


async def test_tenants_are_kept_apart():
    store = Rows([Finished("q", T0, "succeeded", 1)])
    counts = EndedCounts(store)
    for tenant in ("a", "b", None):
        assert [r.n for r in (await counts.last_hour(tenant, T0 + 5 * M)).rows] == [1]
    assert [t for t, _, _ in store.asked] == ["a", "a", "b", "b", None, None]


def test_the_unread_run_is_the_newest_gap_of_at_most_so_many_minutes():
    start, cutoff = T0, T0 + 10 * M
    assert unread_run(set(), start, cutoff, 3) == (T0 + 7 * M, cutoff)
    read = {T0 + i * M for i in (9, 8, 4)}
    assert unread_run(read, start, cutoff, 3) == (T0 + 5 * M, T0 + 8 * M)
    assert unread_run(read, start, cutoff, 10) == (T0 + 5 * M, T0 + 8 * M)  # up to a read one
    assert unread_run({T0 + i * M for i in range(10)}, start, cutoff, 3) is None
