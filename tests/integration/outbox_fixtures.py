"""Fixtures shared by the outbox and notifier integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from taskflow.adapters.outbox import OutboxStore
from taskflow.runtime import Stores

OUTBOX_TABLES = "outbox, outbox_attempts, outbox_sinks, subscriptions, webhook_secrets"


@pytest.fixture
async def outbox(stores: Stores) -> AsyncIterator[OutboxStore]:
    """The outbox of the (emptied) test database, emptied too."""
    await stores.store.pool.execute(f"TRUNCATE {OUTBOX_TABLES}")
    yield OutboxStore(stores.store.pool)


async def outbox_rows(outbox: OutboxStore) -> list[dict]:
    rows = await outbox.pool.fetch(
        "SELECT id, event, tenant, job_id, workflow_id, channel, target, subscription_id, "
        "body, status, attempts FROM outbox ORDER BY id")
    return [dict(r) for r in rows]
