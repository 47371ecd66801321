"""``/queues``: each queue's figures and the workers alive, as the caller may see them.

The figures come from PostgreSQL (the source of truth, and the only store that knows
whose a job is; the running jobs are found through Redis's in-flight sets and checked
there), so a tenant sees its own jobs only; an admin sees every tenant's, or
one tenant's with ``tenant=``. Workers are shared by every tenant: each one shows its
queues and how many of the caller's jobs it runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.params import Parameter

from taskflow.api.auth import READ, Principal
from taskflow.api.context import ApiContext
from taskflow.api.controllers.tasks import Tenant, _problems, listed_tenant
from taskflow.api.overview_schemas import QueuesOut
from taskflow.api.overview import overview

BACKLOG_SCAN_LIMIT = 100_000
"""Most waiting jobs one ``GET /queues`` counts, the oldest first (beyond: ``complete``
is false). Running jobs are all counted."""
MAX_MINUTES = 60


class QueueController(Controller):
    path = "/queues"
    tags = ["queues"]

    @get("/", opt={"scope": READ}, summary="Each queue's figures and the workers alive",
         responses=_problems(400, 401, 403, 422, 503))
    async def queues(
        self, request: Request[Any, Principal, Any], state: State,
        minutes: Annotated[int, Parameter(
            ge=1, le=MAX_MINUTES,
            description="minutes of throughput to return, the current one last")] = 15,
        tenant: Tenant = None,
    ) -> QueuesOut:
        api: ApiContext = state.api
        whose = listed_tenant(request.auth, tenant)
        now = datetime.now(UTC)
        async with api.deadline():
            # Waiting jobs: the oldest BACKLOG_SCAN_LIMIT (and one more, to tell).
            backlog = await api.overview.queue_backlog(whose, BACKLOG_SCAN_LIMIT + 1)
            # failed_last_hour counts whole minutes, from the one an hour ago.
            ended = await api.ended.last_hour(whose, now)
            live = await api.observer.live_workers()
            # Running jobs, all of them: the in-flight sets hold no more than the workers
            # run at once; PostgreSQL says which are running, and whose.
            served = dict.fromkeys([*api.settings.queues, *(q for w in live for q in w.queues)])
            inflight = await api.dispatch.inflight_ids(list(served))
            running = await api.overview.running_jobs(whose, inflight)
        return overview(api.settings.queues, backlog, ended, live, running, now, minutes,
                        BACKLOG_SCAN_LIMIT)
