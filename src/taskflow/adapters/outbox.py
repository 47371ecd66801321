"""PostgreSQL side of notifications and dead letters: the outbox (written by triggers on
``jobs``, migration 0003; claimed and settled here), subscriptions, signing secrets, and
the dead-letter list and redrive."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from taskflow.adapters.postgres import _entry, _job
from taskflow.adapters.sql import QUERIES
from taskflow.models import DispatchEntry, Job

DEAD_LETTERS = "dead_letters"
"""The outbox sink a notifier registers while a DLQ backend is configured."""


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Delivery(msgspec.Struct, frozen=True):
    """A claimed outbox row: one event for one channel and target."""

    id: int
    message_id: uuid.UUID
    event: str
    tenant: str
    job_id: uuid.UUID | None
    workflow_id: uuid.UUID | None
    channel: str            # dead_letter | webhook | email
    target: str | None      # URL, or comma-separated addresses
    subscription_id: uuid.UUID | None
    body: str               # JSON text of the event's data
    attempts: int           # including this one
    created_at: datetime
    secret: str | None      # the subscription's or the tenant's signing secret
    subscribed: bool        # False: its subscription was deleted since
    token: str = ""         # the claim's fencing token


class Settlement(msgspec.Struct, frozen=True):
    """How one claimed row's attempt ended."""

    id: int
    token: str
    outcome: str            # delivered | retried | failed | handed_back
    delay: float = 0.0      # for retried: seconds until the next attempt
    error: str | None = None
    target: str | None = None  # for retried: what the row goes to from now on, if fewer


class NotificationRecord(msgspec.Struct, frozen=True):
    """A delivery of one job event, as ``GET /tasks/{id}/notifications`` shows it."""

    id: int
    event: str
    channel: str
    target: str | None
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    subscription_id: uuid.UUID | None


class Subscription(msgspec.Struct, frozen=True):
    id: uuid.UUID
    tenant: str
    events: list[str]
    queue: str | None
    task: str | None
    webhook: str | None
    email: list[str] | None
    secret: str | None
    created_at: datetime


class DeadLetterQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of the dead-letter list (and of a filtered redrive)."""

    queue: str | None = None
    task: str | None = None
    error: str | None = None          # substring of the last error
    failed_after: datetime | None = None
    failed_before: datetime | None = None


class OutboxStore:
    """Every outbox, subscription and dead-letter query; each method one statement or
    one short transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- the notifier ------------------------------------------------------------------

    async def register_sink(self, name: str, backend: str | None) -> None:
        """Tell the triggers that ``name`` rows have a consumer (``backend`` None: not
        any more)."""
        if backend is None:
            await self.pool.execute(QUERIES["outbox_unregister_sink"], name)
        else:
            await self.pool.execute(QUERIES["outbox_register_sink"], name, backend)

    async def claim(self, limit: int, ttl: float, channels: Sequence[str]) -> list[Delivery]:
        """Due rows of ``channels``, this caller's for ``ttl`` seconds."""
        token = uuid.uuid4().hex
        rows = await self.pool.fetch(QUERIES["outbox_claim"], token, ttl, limit,
                                     list(channels))
        return [Delivery(**r, token=token) for r in rows]

    async def extend_claim(self, ids: Sequence[int], token: str, ttl: float) -> None:
        await self.pool.execute(QUERIES["outbox_extend_claim"], list(ids), token, ttl)

    async def settle(self, settlements: Sequence[Settlement]) -> set[int]:
        """Record the outcomes; returns the ids recorded (a row whose claim was taken
        over meanwhile is not)."""
        if not settlements:
            return set()
        rows = await self.pool.fetch(
            QUERIES["outbox_settle"], [s.id for s in settlements],
            [s.token for s in settlements], [s.outcome for s in settlements],
            [s.delay for s in settlements], [s.error for s in settlements],
            [s.target for s in settlements])
        return {r["id"] for r in rows}

    async def next_due(self, channels: Sequence[str]) -> float | None:
        """Seconds until the earliest pending row is due; None when none is pending."""
        return await self.pool.fetchval(QUERIES["outbox_next_due"], list(channels))

    async def pending_stats(self) -> tuple[int, float]:
        """(rows pending, seconds since the oldest of them was written; 0 when none)."""
        row = await self.pool.fetchrow(QUERIES["outbox_pending_stats"])
        return row["pending"], row["oldest_age"]

    async def webhook_secret(self, tenant: str) -> str:
        """The tenant's signing secret, created on first use."""
        for _ in range(2):  # a concurrent first use may hide the row from this snapshot
            secret = await self.pool.fetchval(QUERIES["ensure_webhook_secret"], tenant,
                                              new_secret())
            if secret is not None:
                return secret
        raise RuntimeError(f"could not create a webhook secret for tenant {tenant!r}")

    async def rotate_webhook_secret(self, tenant: str) -> str:
        return await self.pool.fetchval(QUERIES["rotate_webhook_secret"], tenant, new_secret())

    # -- the API -----------------------------------------------------------------------

    async def job_notifications(self, job_id: uuid.UUID) -> list[NotificationRecord]:
        rows = await self.pool.fetch(QUERIES["job_notifications"], job_id)
        return [NotificationRecord(**r) for r in rows]

    async def insert_subscription(
        self, tenant: str, events: Sequence[str], queue: str | None, task: str | None,
        webhook: str | None, email: Sequence[str] | None,
    ) -> Subscription:
        row = await self.pool.fetchrow(
            QUERIES["insert_subscription"], uuid.uuid4(), tenant, list(events), queue, task,
            webhook, list(email) if email else None, new_secret())
        return Subscription(**row)

    async def list_subscriptions(self, tenant: str, before: uuid.UUID | None,
                                 limit: int) -> list[Subscription]:
        rows = await self.pool.fetch(QUERIES["list_subscriptions"], tenant, before, limit)
        return [Subscription(**r) for r in rows]

    async def delete_subscription(self, subscription_id: uuid.UUID, tenant: str) -> bool:
        return await self.pool.fetchval(
            QUERIES["delete_subscription"], subscription_id, tenant) is not None

    async def list_dead_letters(self, tenant: str | None, query: DeadLetterQuery,
                                before: uuid.UUID | None, limit: int) -> list[Job]:
        rows = await self.pool.fetch(
            QUERIES["list_dead_letters"], tenant, before, query.queue, query.task,
            query.error, query.failed_after, query.failed_before, limit)
        return [_job(r) for r in rows]

    async def redrive(self, ids: Sequence[uuid.UUID], tenant: str) -> list[DispatchEntry]:
        """failed -> queued (or blocked) with a fresh attempt budget, and the descendants
        their failure cancelled waiting again; one transaction. Jobs no longer failed
        are skipped. Returns the jobs redriven."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(QUERIES["redrive_jobs"], list(ids), tenant)
            for row in rows:
                if row["has_dependents"]:
                    await conn.fetch(QUERIES["revive_dependents"], row["id"])
        return [_entry(r) for r in rows]
