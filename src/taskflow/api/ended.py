"""Jobs ended per minute over the last hour, for ``GET /queues``, without reading the
hour from PostgreSQL on every request.

A minute that closed more than :data:`GRACE` ago cannot gain rows any more (the
statement that ends a job stamps ``finished_at`` with its transaction's time and commits
within milliseconds; the grace also absorbs clock skew between this host and the
database), so its counts are read once and kept; each request reads the minutes still
open, and at most :data:`FILL` closed minutes not read yet, newest first. So the work of
one request is bounded whatever the rate (at 10,000 jobs a second the whole hour is 36
million rows, past any request's deadline): a tenant's first request, or the first after
its minutes were dropped, answers with the hour only partly read (``complete`` false),
and the following requests fill it.

Concurrent requests for the same tenant share one read (one task per tenant); each
caller awaits it shielded, so a caller whose deadline passes leaves the read running,
and what it reads is kept for the next request.

Counts are of ends as PostgreSQL recorded them then: a failed job retried later still
counts as a failure in the minute it failed.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import datetime, timedelta

import msgspec

from taskflow.adapters.overview import Finished, OverviewStore

WINDOW = timedelta(hours=1)
"""The hour: the :data:`WINDOW` of whole minutes before the current one, and the current
one so far (so from 60 to 61 minutes)."""
GRACE = timedelta(minutes=2)
MINUTE = timedelta(minutes=1)
FILL = 5
"""Closed minutes one read fills at most (besides the open ones)."""
OPEN_END = timedelta(days=1)  # upper bound of the read of the open minutes (clock skew)
MAX_TENANTS = 1000
"""Tenants whose closed minutes are kept (least recently asked for go first)."""


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


class Hour(msgspec.Struct, frozen=True):
    """The hour's rows; ``complete`` false while some of its closed minutes are unread
    (they count nothing yet)."""

    rows: list[Finished]
    complete: bool


def unread_run(read: set[datetime], start: datetime, cutoff: datetime,
               most: int) -> tuple[datetime, datetime] | None:
    """The newest closed minutes in [``start``, ``cutoff``) not ``read`` yet: [from, to)
    of at most ``most`` consecutive minutes, or None when every one is read."""
    end = cutoff
    while end > start and end - MINUTE in read:
        end -= MINUTE
    if end <= start:
        return None
    begin = end
    while begin > start and end - begin < most * MINUTE and begin - MINUTE not in read:
        begin -= MINUTE
    return begin, end


class _Closed:
    """One tenant's closed minutes (every tenant's: key None), and its read under way."""

    def __init__(self) -> None:
        self.rows: dict[datetime, list[Finished]] = {}  # by minute; [] when none ended
        self.reading: asyncio.Task[Hour] | None = None


class EndedCounts:
    """The hour's counts per (queue, minute, state); one per API process."""

    def __init__(self, store: OverviewStore) -> None:
        self.store = store
        self._tenants: OrderedDict[str | None, _Closed] = OrderedDict()

    async def last_hour(self, tenant: str | None, now: datetime) -> Hour:
        """Rows for the minutes from ``now`` - 1 h (whole minutes) to the current one."""
        closed = self._tenants.get(tenant)
        if closed is None:
            closed = self._tenants[tenant] = _Closed()
            while len(self._tenants) > MAX_TENANTS:
                self._tenants.popitem(last=False)
        self._tenants.move_to_end(tenant)
        if closed.reading is None or closed.reading.done():
            closed.reading = asyncio.create_task(self._read(tenant, closed, now),
                                                 name=f"ended-counts:{tenant}")
            closed.reading.add_done_callback(_retrieve)
        return await asyncio.shield(closed.reading)

    async def _read(self, tenant: str | None, closed: _Closed, now: datetime) -> Hour:
        start = minute_of(now) - WINDOW
        cutoff = minute_of(now - GRACE)  # minutes before it are closed
        for minute in [m for m in closed.rows if m < start]:
            del closed.rows[minute]
        run = unread_run(set(closed.rows), start, cutoff, FILL)
        if run is not None:
            begin, end = run
            rows = await self.store.finished_by_minute(tenant, begin, end)
            minute = begin
            while minute < end:  # kept as soon as read, whatever happens next
                closed.rows[minute] = []
                minute += MINUTE
            for r in rows:
                closed.rows[r.minute].append(r)
        recent = await self.store.finished_by_minute(tenant, cutoff, now + OPEN_END)
        done = unread_run(set(closed.rows), start, cutoff, 1) is None
        return Hour([r for m in sorted(closed.rows) if m >= start for r in closed.rows[m]]
                    + recent, done)


def _retrieve(task: asyncio.Task[Hour]) -> None:
    """Marks a failed read's error as seen when every caller had left (it was theirs)."""
    if not task.cancelled():
        task.exception()
