"""Request and response bodies of the HTTP API (msgspec structs; the OpenAPI schema is
generated from them). Constraints live in the annotations so that decoding enforces
exactly what the schema documents."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, field

from taskflow.config import QueueName
from taskflow.models import PRIORITY_MAX, PRIORITY_MIN, Attempt, Job
from taskflow.states import JobState

TaskName = Annotated[
    str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$",
              description="handler name, as registered with a worker")
]
LabelKey = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:/-]+$")]
LabelValue = Annotated[str, Meta(max_length=200)]
Priority = Annotated[
    int, Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX, description="higher runs first")
]
MAX_BATCH = 5000
"""Most jobs in one ``POST /tasks/batch``."""
MAX_UPSTREAMS = 10_000
"""Most jobs one job may depend on."""
MAX_WORKFLOW = 20_000
"""Most jobs in one workflow."""
NodeName = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$",
                               description="a job's name within its workflow")]
MAX_PAGE = 1000
"""Most jobs in one page of ``GET /tasks``."""
DEFAULT_PAGE = 100

Timestamp = Annotated[datetime, Meta(tz=True)]
"""A moment with its time zone: RFC 3339 (``format: date-time``) in JSON and the schema."""

# A year: far enough for any delay a scheduler is asked for, small enough for timestamps.
MAX_DELAY = 366 * 86_400.0
Seconds = Annotated[float, Meta(ge=0, le=MAX_DELAY)]


class Backoff(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Per-job override of the retry backoff (fields of the task's retry policy)."""

    base_delay: Annotated[float, Meta(ge=0, le=MAX_DELAY)] | None = None
    factor: Annotated[float, Meta(ge=1, le=100)] | None = None
    max_delay: Annotated[float, Meta(ge=0, le=MAX_DELAY)] | None = None
    jitter: Annotated[float, Meta(ge=0, le=1)] | None = None


# local@domain.tld, without the characters that would let one address pass for several
# (commas, semicolons, brackets, quotes, spaces), nor NUL, which PostgreSQL cannot store.
EMAIL_PATTERN = r"^[^@\s,;<>()\[\]\\\"\x00]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"
EmailAddress = Annotated[str, Meta(min_length=3, max_length=254, pattern=EMAIL_PATTERN,
                                   description="an email address (local@domain.tld)")]
WebhookUrl = Annotated[str, Meta(
    min_length=8, max_length=2048, pattern=r"^https?://[^\s\x00]+$",
    description="http(s) URL; must resolve to an address outbound requests may reach")]
JobEvent = Literal["succeeded", "failed", "cancelled"]
MAX_RECIPIENTS = 50


class NotifySpec(Struct, frozen=True, forbid_unknown_fields=True):
    """Who hears of this job's end: a Standard Webhooks POST and/or an email per event."""

    on: Annotated[list[JobEvent], Meta(min_length=1, max_length=3)] = field(
        default_factory=lambda: ["failed"])
    webhook: WebhookUrl | None = None
    email: Annotated[list[EmailAddress], Meta(max_length=MAX_RECIPIENTS)] = field(
        default_factory=list)

    def __post_init__(self) -> None:
        if self.webhook is None and not self.email:
            raise ValueError("give a `webhook`, an `email` list, or both")


class JobSpec(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A job to submit. ``delay`` and ``run_at`` are exclusive; neither means now."""

    task: TaskName
    payload: Any = field(default_factory=dict)
    queue: QueueName = "default"
    priority: Priority = 0
    delay: Annotated[Seconds, Meta(description="seconds from now")] | None = None
    run_at: Annotated[datetime, Meta(tz=True, description="RFC 3339 due time")] | None = None
    max_attempts: Annotated[int, Meta(ge=1, le=1000)] | None = None
    backoff: Backoff | None = None
    timeout: Annotated[float, Meta(gt=0, le=MAX_DELAY)] | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    labels: Annotated[dict[LabelKey, LabelValue], Meta(max_length=50)] = field(
        default_factory=dict
    )
    depends_on: Annotated[list[uuid.UUID], Meta(
        max_length=MAX_UPSTREAMS,
        description="ids of jobs (of the same tenant) that must succeed first")] = field(
        default_factory=list
    )
    notify: NotifySpec | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and self.run_at is not None:
            raise ValueError("`delay` and `run_at` are exclusive; give at most one")


class BatchSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """Jobs submitted together, all or none (at most ``MAX_BATCH``)."""

    tasks: Annotated[list[JobSpec], Meta(min_length=1, max_length=MAX_BATCH)]


class BatchCreated(Struct, frozen=True):
    """Ids of a batch's jobs in the order given (an idempotent replay gives the first
    job's id)."""

    ids: list[uuid.UUID]


OPTIONAL_FIELDS = ("payload", "result")
"""Fields that list and workflow views leave out unless asked for (``include=``)."""


class JobOut(Struct, frozen=True, kw_only=True):
    """A job as the API shows it. ``GET /tasks/{id}`` always has ``payload`` and
    ``result``; lists have them only when asked for (``include=payload,result``)."""

    id: uuid.UUID
    task: str
    queue: str
    state: JobState
    priority: int
    payload: Any | UnsetType = UNSET
    attempts: int
    max_attempts: int
    run_at: Timestamp
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    result: Any | UnsetType = UNSET
    error: str | None
    labels: dict[str, str]
    tenant: str
    idempotency_key: str | None
    timeout: float | None
    cancel_requested: bool
    workflow_id: uuid.UUID | None = None
    node: str | None = None
    pending_upstreams: int = 0  # upstream jobs that have not succeeded yet
    cancelled_by: uuid.UUID | None = None  # the upstream whose failure cancelled it
    notify: dict[str, Any] | None = None  # as submitted: on, webhook, email

    @classmethod
    def of(cls, job: Job, include: Collection[str] = OPTIONAL_FIELDS) -> JobOut:
        return cls(
            id=job.id, task=job.task, queue=job.queue, state=job.state,
            priority=job.priority,
            payload=job.payload if "payload" in include else UNSET,
            attempts=job.attempts, max_attempts=job.max_attempts, run_at=job.run_at,
            created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at,
            result=job.result if "result" in include else UNSET, error=job.error,
            labels=job.labels, tenant=job.tenant, idempotency_key=job.idempotency_key,
            timeout=job.timeout, cancel_requested=job.cancel_requested,
            workflow_id=job.workflow_id, node=job.node,
            pending_upstreams=job.pending_upstreams, cancelled_by=job.cancelled_by,
            notify=job.notify,
        )


class AttemptList(Struct, frozen=True):
    """A job's finished attempts, oldest first (the store's records, as they are)."""

    items: list[Attempt]


class JobPage(Struct, frozen=True):
    """One page of a listing; pass ``next_cursor`` as ``cursor`` for the next one (null
    at the end)."""

    items: list[JobOut]
    next_cursor: str | None


class WorkflowJobSpec(JobSpec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A job of a workflow: any job field, its ``name`` and the names it runs ``after``."""

    name: NodeName
    after: Annotated[list[NodeName], Meta(max_length=MAX_WORKFLOW)] = field(
        default_factory=list)


class WorkflowSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """A graph of jobs submitted together, all or none; edges go by job name."""

    # No control characters: no NUL (PostgreSQL cannot store it), no line breaks (the
    # name goes in notification emails' Subject).
    name: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
    jobs: Annotated[list[WorkflowJobSpec], Meta(min_length=1, max_length=MAX_WORKFLOW)]


class WorkflowCreated(Struct, frozen=True):
    id: uuid.UUID
    jobs: dict[str, uuid.UUID]  # name -> job id


class WorkflowJobOut(Struct, frozen=True):
    name: str
    id: uuid.UUID
    state: JobState
    task: str
    attempts: int
    started_at: Timestamp | None
    finished_at: Timestamp | None
    error: str | None
    # Only when asked for (include=payload,result).
    payload: Any | UnsetType = UNSET
    result: Any | UnsetType = UNSET


class WorkflowState(enum.Enum):
    """A workflow's state, which follows from its jobs' states."""

    RUNNING = "running"
    """Some job is not finished."""
    SUCCEEDED = "succeeded"
    """Every job succeeded."""
    FAILED = "failed"
    """Every job finished and some failed."""
    CANCELLED = "cancelled"
    """Every job finished, none failed, and some were cancelled."""


class WorkflowOut(Struct, frozen=True):
    """A workflow: running while any job is unfinished, then succeeded if every job did,
    failed if any failed, cancelled otherwise."""

    id: uuid.UUID
    name: str
    state: WorkflowState
    created_at: Timestamp
    jobs: list[WorkflowJobOut]


class Problem(Struct, frozen=True, omit_defaults=True):
    """An error (RFC 9457 problem details), served as ``application/problem+json``."""

    title: str
    status: int
    detail: str
    type: str = "about:blank"
    field: str | None = None  # JSON path of the offending input, when there is one


class Health(Struct, frozen=True):
    status: str
    postgres: str | None = None
    redis: str | None = None


def encode_problem(problem: Problem) -> bytes:
    return msgspec.json.encode(problem)
