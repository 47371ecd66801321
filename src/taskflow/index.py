"""Whether the Redis dispatch index is complete, decided without a pass over the backlog.

PostgreSQL names the index generation of a deployment (``dispatch_index``, migration
0004) and Redis keeps it in its epoch key. The epoch matching the generation means Redis
has been indexed from this database and kept since. No epoch means Redis is new, flushed
or restarted empty: if the database has no generation yet and no job waits, this is a new
deployment and the (empty) index is complete -- the first process marks it; otherwise the
index was lost and must be rebuilt from PostgreSQL, by the process that marks it.

Every process checks at start (``may_rebuild=False`` for those that do not rebuild, such
as the API: it only claims a new deployment, so a worker started later does not rebuild
what the API indexed); the reaper checks every pass, reading only Redis while the epoch
matches.
"""

from __future__ import annotations

import logging
import uuid

from taskflow.adapters.postgres import PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow.ids import uuid7

log = logging.getLogger(__name__)


class IndexGuard:
    """Checks one process's view of the index (see the module's docstring)."""

    def __init__(self, store: PostgresStore, dispatch: RedisDispatch) -> None:
        self.store = store
        self.dispatch = dispatch
        self.generation: uuid.UUID | None = None  # never changes once a database has one

    async def check(self, *, may_rebuild: bool = True) -> bool:
        """True when the index is complete; False when it was lost and this caller
        marked it, and must now rebuild it from PostgreSQL."""
        current = await self.dispatch.epoch()
        if self.generation is not None and current == str(self.generation):
            return True
        self.generation, fresh = await self.store.claim_index_generation(uuid7())
        if current == str(self.generation):
            return True
        if current is None and fresh:
            await self.dispatch.mark_epoch(str(self.generation))
            log.info("new deployment: dispatch index generation %s", self.generation)
            return True
        if not may_rebuild:
            return True  # not ours to rebuild: a maintenance duty will
        if current is not None:
            log.warning("Redis holds the index of another generation (%s, want %s): "
                        "rebuilding it", current, self.generation)
        return not await self.dispatch.mark_epoch(str(self.generation),
                                                  replace=current is not None)
