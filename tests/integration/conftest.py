"""Fixtures of the integration tests that touch the outbox."""

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
