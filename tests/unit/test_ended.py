"""Jobs ended per minute: closed minutes are read once and kept; each request reads only
the minutes since (taskflow.api.ended), with a store that records what it is asked."""

from datetime import UTC, datetime, timedelta

from taskflow.adapters.overview import Finished
from taskflow.api.ended import EndedCounts

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
M = timedelta(minutes=1)


class Rows:
    """The finished_by_minute of a table holding ``rows``; records each ``since``."""

    def __init__(self, rows: list[Finished]) -> None:
        self.rows = rows
        self.asked: list[tuple[str | None, datetime]] = []

    async def finished_by_minute(self, tenant, since):
        self.asked.append((tenant, since))
        return [r for r in self.rows if r.minute >= since]


async def test_closed_minutes_are_read_once_and_the_window_slides():
    rows = [Finished("q", T0 - 30 * M, "succeeded", 5), Finished("q", T0, "failed", 1)]
    store = Rows(rows)
    counts = EndedCounts(store)
    first = await counts.last_hour("t", T0 + timedelta(seconds=20))
    assert store.asked == [("t", T0 - 60 * M)]  # the whole hour, once
    assert sorted(r.n for r in first) == [1, 5]

    # Later rows in a closed minute (cannot happen: see the module) would not be read
    # again; rows in open minutes are.
    store.rows = rows + [Finished("q", T0 - 30 * M, "succeeded", 100),
                         Finished("q", T0, "failed", 2)]
    second = await counts.last_hour("t", T0 + 3 * M)
    assert store.asked[-1] == ("t", T0 - 2 * M)  # only since the first open minute
    assert sorted((r.minute, r.n) for r in second) == [
        (T0 - 30 * M, 5), (T0, 1), (T0, 2)]

    # Half an hour on, the minute an hour ago has left the window.
    third = await counts.last_hour("t", T0 + 31 * M)
    assert store.asked[-1] == ("t", T0 + M)
    assert [r for r in third if r.minute < T0 - 29 * M] == []


async def test_tenants_are_kept_apart():
    store = Rows([Finished("q", T0, "succeeded", 1)])
    counts = EndedCounts(store)
    await counts.last_hour("a", T0 + 5 * M)
    await counts.last_hour("b", T0 + 5 * M)
    await counts.last_hour(None, T0 + 5 * M)
    assert [t for t, _ in store.asked] == ["a", "b", None]
    assert all(since == T0 + 5 * M - 60 * M for _, since in store.asked)
