"""The records that cross adapter boundaries. Rows become these structs in one place
(:mod:`taskflow.adapters.postgres`)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Struct, field

from taskflow.config import RetryPolicy
from taskflow.ids import uuid7
from taskflow.states import JobState

LAST_DUE_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z, past every due time

PRIORITY_MIN = -1000
PRIORITY_MAX = 1000


class UnknownUpstreams(ValueError):
    """``depends_on`` names jobs that do not exist for this tenant."""

    def __init__(self, ids: list[uuid.UUID]) -> None:
        listed = ", ".join(str(i) for i in ids)
        super().__init__(f"depends_on names jobs that do not exist: {listed}")
        self.ids = ids


class JobNotify(Struct, frozen=True, forbid_unknown_fields=True):
    """Who hears of a job's end: the ``on`` events (succeeded, failed, cancelled) go to a
    webhook and/or email addresses (see :mod:`taskflow.notifier`)."""

    on: tuple[str, ...] = ("failed",)
    webhook: str | None = None
    email: tuple[str, ...] = ()


class NewJob(Struct, frozen=True, kw_only=True):
    """A job to create. ``max_attempts`` must be resolved (task policy) by the caller."""

    task: str
    max_attempts: int
    payload: Any = msgspec.field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    tenant: str = "default"
    run_at: datetime | None = None
    delay: float | None = None
    retry_policy: RetryPolicy | None = None
    timeout: float | None = None
    idempotency_key: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[uuid.UUID, ...] = ()  # existing jobs of the same tenant
    notify: JobNotify | None = None
    id: uuid.UUID = field(default_factory=uuid7)


class DispatchEntry(Struct, frozen=True):
    """What Redis needs to index a job: where, how urgent, and when it is due."""

    id: uuid.UUID
    queue: str
    priority: int
    run_at: datetime
    state: JobState

    @property
    def due_ms(self) -> int:
        """Due time in whole milliseconds, which is what Redis compares. A scheduled job's
        is rounded up, so it is never claimed before its run_at (rounded down, it could
        start up to 1 ms early); a queued job's is rounded down, so it is ready at once."""
        if self.run_at.tzinfo is None:
            # PostgreSQL's -infinity or infinity, which asyncpg reads as a naive
            # datetime.min or max: due at once, or at the end of time. The API refuses
            # such due times, but a row may hold one, and one entry must not fail a whole
            # enqueue, reconciler pass or rebuild.
            return 0 if self.run_at == datetime.min else LAST_DUE_MS
        ms = self.run_at.timestamp() * 1000
        return math.ceil(ms) if self.state is JobState.SCHEDULED else math.floor(ms)


class Claim(Struct, frozen=True, array_like=True):
    """A lease on one attempt: the job id and the attempt's fencing token."""

    id: str
    token: str


class StartedJob(Struct, frozen=True):
    """A job a worker has moved to running, with what the handler needs."""

    id: uuid.UUID
    task: str
    queue: str
    payload: str  # raw JSON, decoded by the runner so a bad payload fails only its attempt
    priority: int
    attempts: int
    max_attempts: int
    retry_policy: str | None
    timeout: float | None
    lease_token: str
    tenant: str
    upstream_count: int
    run_at: datetime | None = None  # the attempt's due time (queue wait = start - run_at)
    has_dependents: bool = False  # its success may release jobs (see Worker._flush)
    node: str | None = None  # its name in its workflow (its results' key downstream)


class Outcome(Struct, frozen=True):
    """How one attempt ended, and the state the job moves to."""

    id: uuid.UUID
    token: str
    state: JobState
    outcome: str  # succeeded | retried | failed | cancelled
    duration: float
    result: str | None = None  # JSON text
    error: str | None = None
    delay: float | None = None  # for a retry: seconds until the next attempt


class Job(Struct, frozen=True):
    """A job as PostgreSQL holds it."""

    id: uuid.UUID
    tenant: str
    task: str
    queue: str
    payload: Any
    priority: int
    run_at: datetime
    state: JobState
    attempts: int
    max_attempts: int
    retry_policy: Any
    timeout: float | None
    idempotency_key: str | None
    labels: dict[str, str]
    result: Any
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_token: str | None
    worker: str | None
    cancel_requested: bool
    workflow_id: uuid.UUID | None
    node: str | None
    upstream_count: int
    pending_upstreams: int
    has_dependents: bool
    cancelled_by: uuid.UUID | None
    notify: Any = None  # the job's JobNotify as stored (JSON)
    attempt_base: int = 0  # attempts spent before its last redrive


class WorkflowNode(Struct, frozen=True, kw_only=True):
    """A job of a workflow: ``job`` and the names of the nodes it runs after."""

    name: str
    job: NewJob
    after: tuple[str, ...] = ()


class Workflow(Struct, frozen=True):
    """A workflow as PostgreSQL holds it."""

    id: uuid.UUID
    tenant: str
    name: str
    created_at: datetime


class WorkflowMember(Struct, frozen=True):
    """A job of a workflow as the workflow's view shows it (payload and result are None
    unless they were asked for)."""

    id: uuid.UUID
    node: str | None
    state: JobState
    task: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    payload: Any = None
    result: Any = None


class Attempt(Struct, frozen=True):
    """One finished attempt of a job (served by the API as it is: its times are
    time-zone aware, ``format: date-time`` in the OpenAPI document)."""

    attempt: int
    worker: str | None
    started_at: Annotated[datetime, msgspec.Meta(tz=True)]
    finished_at: Annotated[datetime, msgspec.Meta(tz=True)]
    duration: float | None
    outcome: str
    error: str | None
