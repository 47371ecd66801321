"""``/workflows``: submit a graph of jobs at once, read its state, cancel it.

Scoped to the caller's tenant like ``/tasks``: another tenant's workflow is a 404.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Collection
from typing import Annotated, Any

import msgspec
import redis.exceptions
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from msgspec import UNSET

from taskflow import jobs
from taskflow.api.auth import READ, WRITE, Principal
from taskflow.api.context import ApiContext
from taskflow.adapters.overview import WorkflowSummary
from taskflow.api.controllers.tasks import (
    RETRY_MS, Include, LastEventId, Tenant, Wait, _problems, decode_cursor, include_param,
    listed_tenant, page_of, wait_seconds,
)
from taskflow.api.overview_schemas import (
    Edge, WorkflowEdges, WorkflowPage, WorkflowSummaryOut,
)
from taskflow.api.errors import ApiError, Unavailable
from taskflow.api.events import StreamPace, workflow_event_id
from taskflow.api.watch import wait_until
from taskflow.api.schemas import (
    WorkflowCreated, WorkflowJobOut, WorkflowOut, WorkflowSpec, WorkflowState,
)
from taskflow.dag import WorkflowError, check_workflow
from taskflow.models import Workflow, WorkflowMember, WorkflowNode
from taskflow.states import ACTIVE, JobState

WorkflowId = Annotated[uuid.UUID, Parameter(description="workflow id")]

WORKFLOW_EVENT_STREAM = {200: ResponseSpec(
    str, media_type="text/event-stream", generate_examples=False,
    description="Server-Sent Events: the workflow's whole view (data: JSON, as GET "
                "/workflows/{id}; event: its state) each time it changed, first at once; "
                "id: usable as Last-Event-ID; comment lines as heartbeats; the stream ends "
                "after the workflow has ended")}


LIST_COUNT_CAP = 1000
"""Jobs of each listed workflow counted at most (so a page costs at most its size times
this, whatever the workflows' sizes)."""
MAX_LIST_PAGE = 100


def _summary(w: WorkflowSummary) -> WorkflowSummaryOut:
    """A list entry, its state from its jobs' counts by the rule of the full view (when
    they were counted up to the cap only: running if any is unfinished, else from those
    counted)."""
    more = w.total > LIST_COUNT_CAP
    state = (WorkflowState.RUNNING if w.running
             else state_of_counts(w.total, 0, w.succeeded, w.failed))
    return WorkflowSummaryOut(w.id, w.name, w.tenant, state, w.created_at,
                              min(w.total, LIST_COUNT_CAP), w.unfinished, w.succeeded,
                              w.failed, more)


def state_of_counts(total: int, unfinished: int, succeeded: int,
                    failed: int) -> WorkflowState:
    """running while any job is unfinished; then succeeded if all succeeded, failed if
    any failed, cancelled otherwise."""
    if unfinished:
        return WorkflowState.RUNNING
    if succeeded == total:
        return WorkflowState.SUCCEEDED
    if failed:
        return WorkflowState.FAILED
    return WorkflowState.CANCELLED


def workflow_state(states: list[JobState]) -> WorkflowState:
    """The state of a workflow whose jobs are in ``states`` (see :func:`state_of_counts`)."""
    return state_of_counts(len(states), sum(s in ACTIVE for s in states),
                           sum(s is JobState.SUCCEEDED for s in states),
                           sum(s is JobState.FAILED for s in states))


def _view(workflow: Workflow, members: list[WorkflowMember],
          include: Collection[str] = ()) -> WorkflowOut:
    return WorkflowOut(
        workflow.id, workflow.name, workflow_state([j.state for j in members]),
        workflow.created_at,
        [WorkflowJobOut(j.node or "", j.id, j.state, j.task, j.attempts, j.started_at,
                        j.finished_at, j.error,
                        payload=j.payload if "payload" in include else UNSET,
                        result=j.result if "result" in include else UNSET)
         for j in members],
    )


class WorkflowController(Controller):
    path = "/workflows"
    tags = ["workflows"]

    @post("/", opt={"scope": WRITE}, status_code=201, summary="Submit a workflow",
          responses=_problems(400, 401, 403, 413, 422, 429, 503))
    async def submit(self, request: Request[Any, Principal, Any], state: State,
                     data: JSONBody[WorkflowSpec]) -> WorkflowCreated:
        api: ApiContext = state.api
        tenant = request.auth.tenant
        duplicates = sorted(n for n, c in Counter(j.name for j in data.jobs).items() if c > 1)
        if duplicates:
            raise ApiError(422, f"jobs: duplicate job name(s): {', '.join(duplicates)}",
                           field="jobs")
        nodes = []
        for i, spec in enumerate(data.jobs):
            if spec.depends_on:
                raise ApiError(422, f"jobs[{i}].depends_on: inside a workflow, name the jobs "
                               "to run after in `after`", field=f"jobs[{i}].depends_on")
            if spec.idempotency_key is not None:
                raise ApiError(422, f"jobs[{i}].idempotency_key: not supported inside a "
                               "workflow (a job replaced by an existing one would leave its "
                               "dependents waiting)", field=f"jobs[{i}].idempotency_key")
            job = api.submitter.new_job(spec, tenant, f"jobs[{i}].")
            nodes.append(WorkflowNode(name=spec.name, after=tuple(spec.after), job=job))
        try:
            check_workflow({n.name: n.after for n in nodes})
        except WorkflowError as exc:
            raise ApiError(422, f"jobs: {exc}", field="jobs") from None
        await api.submitter.check_targets([n.job for n in nodes],
                                          [f"jobs[{i}]." for i in range(len(nodes))])
        async with api.deadline():
            await api.submitter.quotas.check_active([n.job for n in nodes])
        # Bounded by the stores' own timeouts, not a deadline that could fire after the
        # commit (see TaskController.submit).
        workflow, ids = await jobs.submit_workflow(api.store, api.dispatch, tenant,
                                                   data.name, nodes)
        return WorkflowCreated(workflow.id, ids)

    @get("/", opt={"scope": READ}, summary="List workflows, newest first",
         responses=_problems(400, 401, 403, 422, 503))
    async def list_workflows(
        self, request: Request[Any, Principal, Any], state: State,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIST_PAGE,
                                        description="page size")] = MAX_LIST_PAGE,
        cursor: Annotated[str | None, Parameter(
            description="next_cursor of the previous page", max_length=64)] = None,
        tenant: Tenant = None,
    ) -> WorkflowPage:
        api: ApiContext = state.api
        whose = listed_tenant(request.auth, tenant)
        before = decode_cursor(cursor) if cursor else None
        async with api.deadline():
            found = await api.overview.list_workflows(whose, before, limit + 1,
                                                      LIST_COUNT_CAP + 1)
        page, cursor = page_of(found, limit)
        return WorkflowPage([_summary(w) for w in page], cursor)

    @get("/{workflow_id:uuid}/edges", opt={"scope": READ},
         summary="A workflow's dependency edges, upstream job to dependent job",
         responses=_problems(400, 401, 403, 404, 422, 503))
    async def edges(self, request: Request[Any, Principal, Any], state: State,
                    workflow_id: WorkflowId) -> WorkflowEdges:
        api: ApiContext = state.api
        async with api.deadline():
            await _readable_workflow(api, request.auth, workflow_id)
            found = await api.overview.workflow_edges(workflow_id)
        return WorkflowEdges([Edge(up, job) for up, job in found])

    @get("/{workflow_id:uuid}", opt={"scope": READ}, summary="A workflow and its jobs",
         responses=_problems(400, 401, 403, 404, 422, 503))
    async def get_workflow(self, request: Request[Any, Principal, Any], state: State,
                           workflow_id: WorkflowId, include: Include = None,
                           wait: Wait = None) -> WorkflowOut:
        api: ApiContext = state.api
        principal = request.auth
        extra = include_param(include)
        seconds = wait_seconds(api, wait)
        async with api.deadline():
            workflow = await _readable_workflow(api, principal, workflow_id)

        async def read() -> list[WorkflowMember]:
            async with api.deadline():
                return await api.store.workflow_members(
                    workflow_id, with_payload="payload" in extra,
                    with_result="result" in extra)

        members = await read()
        if seconds is not None and workflow_state([m.state for m in members]) is \
                WorkflowState.RUNNING:
            # Woken by a change of any member (workers name jobs, not workflows) or of
            # the workflow itself (its cancellation).
            members = await wait_until(
                api.feed, [workflow_id, *(m.id for m in members)], read,
                lambda ms: workflow_state([m.state for m in ms]) is not WorkflowState.RUNNING,
                seconds, request.receive)
        return _view(workflow, members, extra)

    @get("/{workflow_id:uuid}/events", opt={"scope": READ}, media_type="text/event-stream",
         summary="A workflow's view as Server-Sent Events, each time a job of it changes, "
                 "until it ends", responses={**WORKFLOW_EVENT_STREAM,
                                             **_problems(400, 401, 403, 404, 422, 503)})
    async def events(self, request: Request[Any, Principal, Any], state: State,
                     workflow_id: WorkflowId, last_event_id: LastEventId = None,
                     include: Include = None) -> ServerSentEvent:
        api: ApiContext = state.api
        extra = include_param(include)
        async with api.deadline():
            workflow = await _readable_workflow(api, request.auth, workflow_id)
        return ServerSentEvent(_workflow_stream(api, workflow, last_event_id, extra))

    @post("/{workflow_id:uuid}/cancel", opt={"scope": WRITE}, status_code=200,
          summary="Cancel every unfinished job of a workflow (running ones are stopped by "
                  "their workers)", responses=_problems(400, 401, 403, 404, 503))
    async def cancel(self, request: Request[Any, Principal, Any], state: State,
                     workflow_id: WorkflowId) -> WorkflowOut:
        api: ApiContext = state.api
        async with api.deadline():
            workflow = await api.store.get_tenant_workflow(workflow_id, request.auth.tenant)
            if workflow is None:
                raise _not_found(workflow_id)
            try:
                await jobs.cancel_workflow(api.store, api.dispatch, workflow_id)
            except redis.exceptions.RedisError as exc:
                raise Unavailable(f"the cancellation is recorded but running jobs' workers "
                                  f"could not be told ({type(exc).__name__}); repeat the "
                                  "request") from None
            members = await api.store.workflow_members(workflow_id)
        return _view(workflow, members)


async def _readable_workflow(api: ApiContext, principal: Principal,
                             workflow_id: uuid.UUID) -> Workflow:
    workflow = await api.store.get_tenant_workflow(
        workflow_id, None if principal.is_admin else principal.tenant)
    if workflow is None:
        raise _not_found(workflow_id)
    return workflow


async def _workflow_stream(api: ApiContext, workflow: Workflow, last: str | None,
                           extra: Collection[str]):
    """Each event is the workflow's whole view (``GET /workflows/{id}``), sent when it
    differs from the last one sent: resuming cannot miss a change, whatever happened
    meanwhile (see ``workflow_event_id``). Ends after the workflow has ended."""
    pace = StreamPace(api.settings.api.events_heartbeat, api.settings.api.events_max_seconds)
    with api.feed.watch([workflow.id]) as watcher:
        watched: set[uuid.UUID] = set()
        first = True
        while True:
            watcher.changed.clear()
            async with api.deadline():
                members = await api.store.workflow_members(
                    workflow.id, with_payload="payload" in extra,
                    with_result="result" in extra)
            new = {m.id for m in members} - watched
            if new:  # watch the members too: workers announce jobs, not workflows
                api.feed.add_keys(watcher, new)
                watched |= new
            event_id = workflow_event_id(members)
            view = _view(workflow, members, extra)
            if event_id != last:
                yield ServerSentEventMessage(data=msgspec.json.encode(view).decode(),
                                             event=view.state.value, id=event_id,
                                             retry=RETRY_MS if first else None)
                last, first = event_id, False
            if view.state is not WorkflowState.RUNNING or api.feed.closing:
                return  # closing: see ChangeFeed.close
            step = await pace.pause(watcher.changed)
            if step == "stop":  # the client reconnects with Last-Event-ID
                return
            if step == "beat":  # a comment only: no data line, so no event
                yield ServerSentEventMessage(comment="keep-alive", data=None)


def _not_found(workflow_id: uuid.UUID) -> ApiError:
    return ApiError(404, f"no workflow {workflow_id} for this tenant")
