"""``/workflows``: submit a graph of jobs at once, read its state, cancel it.

Scoped to the caller's tenant like ``/tasks``: another tenant's workflow is a 404.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Collection
from typing import Annotated, Any

import redis.exceptions
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from msgspec import UNSET

from taskflow import jobs
from taskflow.api.auth import READ, WRITE, Principal, scope_guard
from taskflow.api.context import ApiContext
from taskflow.api.controllers.tasks import Include, _problems, include_param
from taskflow.api.errors import ApiError, Unavailable
from taskflow.api.schemas import (
    WorkflowCreated, WorkflowJobOut, WorkflowOut, WorkflowSpec, WorkflowState,
)
from taskflow.dag import WorkflowError, check_workflow
from taskflow.models import Workflow, WorkflowMember, WorkflowNode
from taskflow.states import ACTIVE, JobState

WorkflowId = Annotated[uuid.UUID, Parameter(description="workflow id")]


def workflow_state(states: list[JobState]) -> WorkflowState:
    """running while any job is unfinished; then succeeded if all succeeded, failed if
    any failed, cancelled otherwise."""
    if any(s in ACTIVE for s in states):
        return WorkflowState.RUNNING
    if all(s is JobState.SUCCEEDED for s in states):
        return WorkflowState.SUCCEEDED
    if any(s is JobState.FAILED for s in states):
        return WorkflowState.FAILED
    return WorkflowState.CANCELLED


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
    guards = [scope_guard]

    @post("/", opt={"scope": WRITE}, status_code=201, summary="Submit a workflow",
          responses=_problems(400, 401, 403, 413, 422, 429, 503))
    async def submit(self, request: Request[Any, Principal, Any], state: State,
                     data: WorkflowSpec) -> WorkflowCreated:
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

    @get("/{workflow_id:uuid}", opt={"scope": READ}, summary="A workflow and its jobs",
         responses=_problems(400, 401, 403, 404, 422, 503))
    async def get_workflow(self, request: Request[Any, Principal, Any], state: State,
                           workflow_id: WorkflowId, include: Include = None) -> WorkflowOut:
        api: ApiContext = state.api
        principal = request.auth
        extra = include_param(include)
        async with api.deadline():
            workflow = await api.store.get_tenant_workflow(
                workflow_id, None if principal.is_admin else principal.tenant)
            if workflow is None:
                raise _not_found(workflow_id)
            members = await api.store.workflow_members(
                workflow_id, with_payload="payload" in extra, with_result="result" in extra)
        return _view(workflow, members, extra)

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


def _not_found(workflow_id: uuid.UUID) -> ApiError:
    return ApiError(404, f"no workflow {workflow_id} for this tenant")
