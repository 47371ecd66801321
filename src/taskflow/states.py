"""The job lifecycle: one state enum, its groups and the allowed transitions.

Every state change in the store is a guarded update whose ``WHERE`` clause names the state
the change starts from; :data:`TRANSITIONS` is the table those guards follow, and the unit
tests hold the SQL to it.
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """State of a job. The comment on each says who moves a job out of it."""

    BLOCKED = "blocked"
    """Waits for upstream jobs; released by the transaction that completes the last one."""
    SCHEDULED = "scheduled"
    """Due later (``run_at`` in the future, or a retry backing off); claimed once due."""
    QUEUED = "queued"
    """Ready to run; a worker claims it from the Redis ready set."""
    RUNNING = "running"
    """Leased by a worker; ended by that worker, or rescued by the reaper if its lease expires."""
    SUCCEEDED = "succeeded"
    """Terminal: the handler returned."""
    FAILED = "failed"
    """Terminal: retries exhausted or a non-retryable error; the last error is kept."""
    CANCELLED = "cancelled"
    """Terminal: cancelled by a user, or because an upstream job failed."""


WAITING = frozenset({JobState.BLOCKED, JobState.SCHEDULED, JobState.QUEUED})
"""Not yet started: can be cancelled at once."""
DISPATCHABLE = frozenset({JobState.SCHEDULED, JobState.QUEUED})
"""States whose jobs belong in the Redis dispatch index."""
ACTIVE = WAITING | {JobState.RUNNING}
TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # blocked -> running: released by the outcome flush of the worker that runs it (see
    # taskflow_finish_and_start, migration 0008), without passing through the index.
    JobState.BLOCKED: frozenset(
        {JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING, JobState.CANCELLED}),
    JobState.SCHEDULED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    # running -> queued: handed back at shutdown, or rescued after a lost lease;
    # running -> scheduled: a retry that backs off.
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.QUEUED,
            JobState.SCHEDULED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    # A manual retry puts a failed or cancelled job back in line, or back to waiting for
    # its upstreams; the retry of an upstream revives the dependents it cancelled.
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.BLOCKED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.BLOCKED}),
}


class InvalidTransition(Exception):
    """A state change the lifecycle does not allow."""


def can_transition(source: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[source]


def check_transition(source: JobState, target: JobState) -> None:
    if not can_transition(source, target):
        raise InvalidTransition(f"a {source.value} job cannot become {target.value}")
