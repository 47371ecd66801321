"""Sending dead letters back to work (redrive), page by page: each page is one short
transaction and one Redis round trip per queue, so redriving 100,000 jobs neither holds
one huge transaction nor floods Redis."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from msgspec import Struct

from taskflow.adapters.outbox import DeadLetterQuery, OutboxStore
from taskflow.adapters.postgres import PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow.states import JobState

log = logging.getLogger(__name__)

PAGE = 500


class Redriven(Struct, frozen=True):
    matched: int
    ids: list[uuid.UUID]  # redriven (matched, in a dry run)


async def redrive_ids(outbox: OutboxStore, store: PostgresStore, dispatch: RedisDispatch,
                      tenant: str, ids: Sequence[uuid.UUID], *, dry_run: bool = False,
                      page: int = PAGE) -> Redriven:
    """Redrive the listed jobs of ``tenant`` that are failed; others are skipped."""
    unique = list(dict.fromkeys(ids))
    matched = 0
    done: list[uuid.UUID] = []
    for start in range(0, len(unique), page):
        chunk = unique[start:start + page]
        if dry_run:
            found = [j.id for j in await store.get_jobs(chunk)
                     if j.tenant == tenant and j.state is JobState.FAILED]
            matched += len(found)
            done += found
        else:
            moved = await _redrive_page(outbox, dispatch, tenant, chunk)
            matched += len(moved)
            done += moved
    return Redriven(matched, done)


async def redrive_matching(outbox: OutboxStore, dispatch: RedisDispatch, tenant: str,
                           query: DeadLetterQuery, limit: int, *, dry_run: bool = False,
                           page: int = PAGE) -> Redriven:
    """Redrive up to ``limit`` of ``tenant``'s dead letters matching ``query``, newest
    first."""
    cursor: uuid.UUID | None = None
    matched = 0
    done: list[uuid.UUID] = []
    while matched < limit:
        found = await outbox.list_dead_letters(tenant, query, cursor, min(page, limit - matched))
        if not found:
            break
        cursor = found[-1].id
        matched += len(found)
        ids = [j.id for j in found]
        done += ids if dry_run else await _redrive_page(outbox, dispatch, tenant, ids)
    return Redriven(matched, done)


async def _redrive_page(outbox: OutboxStore, dispatch: RedisDispatch, tenant: str,
                        ids: list[uuid.UUID]) -> list[uuid.UUID]:
    entries = await outbox.redrive(ids, tenant)
    if entries:
        try:
            await dispatch.reindex(entries)
        except Exception:
            log.exception("redrove %d jobs but could not index them in Redis; the "
                          "reconciler will", len(entries))
    moved = {e.id for e in entries}
    return [i for i in ids if i in moved]  # in the order asked (RETURNING has none)
