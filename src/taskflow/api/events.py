"""What a job's event stream shows, derived from PostgreSQL alone.

Notifications only say "look again"; the events are computed from the job row and its
``job_attempts`` rows (append-only), so a stream resumed from any event id, on any API
process, shows every state change after it that PostgreSQL can tell, in order.

An event id is ``<n>.<phase>``: ``n`` finished attempts (``job_attempts`` rows, handed-
back and lost attempts included) before the change, and the phase the job entered:
``0`` blocked, ``1`` queued or scheduled, ``2`` running, ``3`` ended (terminal). Ids grow
along a job's life (compare them as pairs of numbers), and the same change has the same
id whenever and wherever it is derived: attempt ``n+1`` running is ``n.2`` while it runs
and after it ends. A stream sends the events whose id is above ``Last-Event-ID``.

What PostgreSQL cannot tell is not replayed: a job that was blocked and then released
shows ``blocked`` only to a stream that watched it then (the replay starts at ``0.1``
queued), and the waiting state between two attempts is named by how the attempt ended
(``scheduled`` after a retry, even one due at once; ``queued`` after a lost or handed-back
attempt), live and replayed alike. Starts, ends of attempts and the terminal state are
never skipped. A manual retry of an ended job starts after the stream closed; a new
stream shows it.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from taskflow.models import Attempt, Job, WorkflowMember
from taskflow.states import JobState

Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]

_PHASE = {JobState.BLOCKED: 0, JobState.SCHEDULED: 1, JobState.QUEUED: 1,
          JobState.RUNNING: 2, JobState.SUCCEEDED: 3, JobState.FAILED: 3,
          JobState.CANCELLED: 3}


class JobEvent(Struct, frozen=True, kw_only=True):
    """The ``data:`` of one event (JSON); the SSE ``event:`` field is its state."""

    job_id: uuid.UUID
    state: JobState
    attempt: int  # the attempt running, or the last one made (0: none yet)
    at: Timestamp | None = None  # when the change happened, where PostgreSQL knows
    outcome: str | None = None  # after an attempt: how it ended (failed, lost, ...)
    error: str | None = None
    result: Any | UnsetType = UNSET  # on succeeded


EventId = tuple[int, int]


def format_id(key: EventId) -> str:
    return f"{key[0]}.{key[1]}"


def parse_id(text: str) -> EventId | None:
    """An id as :func:`format_id` writes it; None when it is not one."""
    n, dot, phase = text.strip().partition(".")
    # isascii: str.isdigit() also takes digits int() refuses, such as "²".
    if (not dot or not (n + phase).isascii() or not n.isdigit() or not phase.isdigit()
            or int(phase) > 3):
        return None
    return int(n), int(phase)


def job_events(job: Job, attempts: list[Attempt]) -> list[tuple[EventId, JobEvent]]:
    """The job's state changes in order, as PostgreSQL tells them (see the module)."""
    events: list[tuple[EventId, JobEvent]] = []
    n = len(attempts)
    state = job.state
    phase = _PHASE[state]
    # It waited before its first attempt (blocked first, maybe: not recorded), also while
    # that attempt runs: a stream starting then shows what a later replay shows.
    if n or phase == 2:
        events.append(((0, 1), JobEvent(job_id=job.id, state=JobState.QUEUED, attempt=0,
                                        at=job.created_at)))
    for i, a in enumerate(attempts):
        events.append(((i, 2), JobEvent(job_id=job.id, state=JobState.RUNNING,
                                        attempt=a.attempt, at=a.started_at)))
        if i < n - 1 or state is JobState.RUNNING:
            # Followed by another attempt: the job waited for it.
            events.append(((i + 1, 1), JobEvent(
                job_id=job.id, state=_between(a), attempt=a.attempt, at=a.finished_at,
                outcome=a.outcome, error=a.error)))
    last = attempts[-1] if attempts else None
    if phase == 2:
        current = JobEvent(job_id=job.id, state=state, attempt=job.attempts,
                           at=job.started_at)
    elif phase == 3:
        current = JobEvent(job_id=job.id, state=state, attempt=job.attempts,
                           at=job.finished_at, outcome=last.outcome if last else None,
                           error=job.error,
                           result=job.result if state is JobState.SUCCEEDED else UNSET)
    else:
        current = JobEvent(job_id=job.id, state=_between(last) if last else state,
                           attempt=job.attempts,
                           at=last.finished_at if last else job.created_at,
                           outcome=last.outcome if last else None,
                           error=last.error if last else None)
    events.append(((n, phase), current))
    return events


def _between(attempt: Attempt) -> JobState:
    """The waiting state after an attempt, as both a live and a replayed stream name it
    (PostgreSQL keeps no record of a retry's delay): ``queued`` after an attempt handed
    back or lost, ``scheduled`` after a retry (due at its ``run_at``, possibly at once)."""
    if attempt.outcome in ("handed_back", "lost"):
        return JobState.QUEUED
    return JobState.SCHEDULED


def workflow_event_id(members: list[WorkflowMember]) -> str:
    """The id of a workflow's snapshot: each event of a workflow stream is its whole view,
    sent when any member's state or attempt changed; the id is a digest of those, so a
    stream resumed with ``Last-Event-ID`` sends the view again only if it changed."""
    progress = sum(4 * m.attempts + _PHASE[m.state] for m in members)
    digest = zlib.crc32(";".join(f"{m.id}:{m.state.value}:{m.attempts}"
                                 for m in members).encode())
    return f"{progress}-{digest:08x}"


class StreamPace:
    """When an event stream looks at PostgreSQL again: when its watcher says something
    changed, and at each heartbeat (so a lost notification costs at most one), until the
    stream's lifetime is up (the client then resumes with ``Last-Event-ID``)."""

    def __init__(self, heartbeat: float, lifetime: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.heartbeat = heartbeat
        self.ends = self._loop.time() + lifetime

    async def pause(self, changed: asyncio.Event) -> Literal["stop", "beat", "look"]:
        """``stop``: the lifetime is up; ``beat``: a heartbeat passed with no change
        (send a keep-alive comment, then look again); ``look``: look again now."""
        left = self.ends - self._loop.time()
        if left <= 0:
            return "stop"
        try:
            async with asyncio.timeout(min(self.heartbeat, left)):
                await changed.wait()
        except TimeoutError:
            return "beat" if self._loop.time() < self.ends else "look"
        return "look"
