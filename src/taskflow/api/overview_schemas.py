"""Response bodies of the read endpoints the web console needs (``GET /queues``, ``GET
/workflows``, a workflow's edges, a job's neighbours); see :mod:`taskflow.api.schemas`
for the conventions."""

from __future__ import annotations

import uuid
from typing import Literal

from msgspec import Struct

from taskflow.api.schemas import Timestamp, WorkflowState
from taskflow.states import JobState


class Minute(Struct, frozen=True):
    """Jobs of a queue that ended within one minute."""

    minute: Timestamp  # its start
    succeeded: int
    failed: int
    cancelled: int


class QueueFigures(Struct, frozen=True):
    """A queue as the caller's token sees it (its tenant's jobs; every tenant's for an
    admin). ``ready`` includes scheduled jobs that are due."""

    name: str
    ready: int
    scheduled: int
    running: int
    blocked: int
    failed_last_hour: int  # in the 60 whole minutes before the current one, and this one
    oldest_ready_age: float | None  # seconds the oldest ready job has been due; null: none
    throughput: list[Minute]  # oldest first, one per minute of the window, the current last


class WorkerOut(Struct, frozen=True):
    """A worker whose presence heartbeat is current, and how many of the caller's jobs
    it runs."""

    name: str
    queues: list[str]
    running: int


class QueuesOut(Struct, frozen=True):
    """Every declared queue (and any other that holds jobs), and the workers alive.
    ``complete`` is false when the waiting jobs were too many to count them all: the
    backlog figures are then lower bounds (the oldest jobs are counted; running jobs are
    always counted in full). ``hour_complete`` is false while the jobs ended in the last
    hour are still being read (a few minutes a request, newest first): ``throughput``
    and ``failed_last_hour`` are then lower bounds."""

    at: Timestamp
    queues: list[QueueFigures]
    workers: list[WorkerOut]
    complete: bool
    hour_complete: bool


class WorkflowSummaryOut(Struct, frozen=True):
    """A workflow in a list. Its jobs are counted up to a cap (1,000): beyond it
    ``more_jobs`` is true and the counts are of that many of its jobs; ``state`` is then
    ``running`` exactly when any job is unfinished, and once all have ended it follows
    from the jobs counted (the workflow's own view has the exact state)."""

    id: uuid.UUID
    name: str
    tenant: str
    state: WorkflowState
    created_at: Timestamp
    jobs: int
    unfinished: int
    succeeded: int
    failed: int
    more_jobs: bool


class WorkflowPage(Struct, frozen=True):
    """One page of workflows, newest first; ``next_cursor`` as in ``GET /tasks``."""

    items: list[WorkflowSummaryOut]
    next_cursor: str | None


class Edge(Struct, frozen=True):
    upstream: uuid.UUID
    job: uuid.UUID


class WorkflowEdges(Struct, frozen=True):
    """A workflow's dependency edges, upstream job → dependent job (they never change
    after the workflow is submitted)."""

    edges: list[Edge]


class LinkedJob(Struct, frozen=True):
    id: uuid.UUID
    task: str
    state: JobState
    node: str | None


class JobLinks(Struct, frozen=True):
    """A job's direct upstream and downstream jobs (at most ``limit`` each; ``more``
    says a list was cut)."""

    upstream: list[LinkedJob]
    downstream: list[LinkedJob]
    more: bool


Direction = Literal["up", "down"]
