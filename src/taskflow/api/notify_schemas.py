"""Request and response bodies of the dead-letter, subscription and notification
endpoints (see :mod:`taskflow.api.schemas` for the conventions)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct, field

from taskflow.adapters.outbox import NotificationRecord, Subscription
from taskflow.api.schemas import MAX_RECIPIENTS, EmailAddress, TaskName, WebhookUrl
from taskflow.config import QueueName

Event = Literal["job.succeeded", "job.failed", "job.cancelled", "workflow.succeeded",
                "workflow.failed", "workflow.cancelled"]
MAX_REDRIVE = 100_000
"""Most jobs one ``POST /dead-letters/redrive`` sends back to work."""
MAX_REDRIVE_IDS = 10_000
"""Most ids listed in one redrive request."""


class SubscriptionSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """Events of the tenant's jobs (optionally one queue and/or task) to a webhook or to
    email addresses."""

    events: Annotated[list[Event], Meta(min_length=1, max_length=6)]
    queue: QueueName | None = None
    task: TaskName | None = None
    webhook: WebhookUrl | None = None
    email: Annotated[list[EmailAddress], Meta(max_length=MAX_RECIPIENTS)] | None = None

    def __post_init__(self) -> None:
        if (self.webhook is None) == (not self.email):
            raise ValueError("give either `webhook` or a non-empty `email` list")


class SubscriptionOut(Struct, frozen=True):
    id: uuid.UUID
    events: list[str]
    queue: str | None
    task: str | None
    webhook: str | None
    email: list[str] | None
    created_at: datetime

    @classmethod
    def of(cls, s: Subscription) -> SubscriptionOut:
        return cls(s.id, s.events, s.queue, s.task, s.webhook, s.email, s.created_at)


class SubscriptionCreated(SubscriptionOut, frozen=True):
    """The subscription and its signing secret, shown this once."""

    secret: str = ""


class SubscriptionPage(Struct, frozen=True):
    items: list[SubscriptionOut]
    next_cursor: str | None


class WebhookSecret(Struct, frozen=True):
    """Signs the webhooks named in this tenant's jobs' ``notify`` (unless the operator
    configured one secret for all, notify.webhook_secret)."""

    secret: str


class NotificationList(Struct, frozen=True):
    """Deliveries of a job's events, oldest first."""

    items: list[NotificationRecord]


class DeadLetterFilter(Struct, frozen=True, forbid_unknown_fields=True):
    queue: QueueName | None = None
    task: TaskName | None = None
    error: Annotated[str, Meta(min_length=1, max_length=1000,
                               description="substring of the last error")] | None = None
    failed_after: Annotated[datetime, Meta(tz=True)] | None = None
    failed_before: Annotated[datetime, Meta(tz=True)] | None = None


class RedriveSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """Either ``ids`` or a ``filter`` (with ``limit``); ``dry_run`` only counts."""

    ids: Annotated[list[uuid.UUID], Meta(min_length=1, max_length=MAX_REDRIVE_IDS)] | None = None
    filter: DeadLetterFilter | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_REDRIVE)] = 1000
    dry_run: bool = False

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give either `ids` or `filter`")


class RedriveResult(Struct, frozen=True):
    """How many dead letters matched, how many went back to work (0 in a dry run), and
    the ids of those (of the matched ones, in a dry run)."""

    matched: int
    redriven: int
    ids: list[uuid.UUID] = field(default_factory=list)
