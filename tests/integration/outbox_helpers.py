"""Helpers of the outbox and notifier integration tests."""

from __future__ import annotations

from taskflow.adapters.outbox import OutboxStore


async def outbox_rows(outbox: OutboxStore) -> list[dict]:
    rows = await outbox.pool.fetch(
        "SELECT id, event, tenant, job_id, workflow_id, channel, target, subscription_id, "
        "body, status, attempts FROM outbox ORDER BY id")
    return [dict(r) for r in rows]
