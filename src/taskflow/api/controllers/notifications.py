"""Dead letters (list, redrive), notification subscriptions, the tenant's webhook
signing secret, and the deliveries of a job's events.

Everything is scoped to the caller's tenant: another tenant's subscription or job is a
404. Subscriptions and the secret need ``subscriptions:write`` (or ``admin``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.params import JSONBody, Parameter

from taskflow import deadletters
from taskflow.adapters.outbox import DeadLetterQuery, OutboxStore
from taskflow.api.auth import READ, WRITE, Principal
from taskflow.api.context import ApiContext
from taskflow.api.controllers.tasks import (
    JobId, Tenant, _problems, _readable_job, _timestamp, decode_cursor, listed_tenant,
    page_of,
)
from taskflow.api.errors import ApiError
from taskflow.api.notify_schemas import (
    NotificationList, RedriveResult, RedriveSpec, SubscriptionCreated, SubscriptionOut,
    SubscriptionPage, SubscriptionSpec, WebhookSecret,
)
from taskflow.api.schemas import DEFAULT_PAGE, MAX_PAGE, JobOut, JobPage
from taskflow.api.scopes import SUBSCRIPTIONS


def _outbox(api: ApiContext) -> OutboxStore:
    return OutboxStore(api.store.pool)


class DeadLetterController(Controller):
    path = "/dead-letters"
    tags = ["dead letters"]

    @get("/", opt={"scope": READ}, summary="The tenant's terminal failures, newest first",
         responses=_problems(400, 401, 403, 422, 503))
    async def list_dead_letters(
        self, request: Request[Any, Principal, Any], state: State,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="page size")] = DEFAULT_PAGE,
        cursor: Annotated[str | None, Parameter(
            description="next_cursor of the previous page", max_length=64)] = None,
        queue: Annotated[str | None, Parameter(max_length=128)] = None,
        task: Annotated[str | None, Parameter(max_length=200)] = None,
        error: Annotated[str | None, Parameter(
            max_length=1000, description="substring of the last error")] = None,
        failed_after: Annotated[str | None, Parameter(
            schema_extra={"format": "date-time"},
            description="RFC 3339; failed at or after")] = None,
        failed_before: Annotated[str | None, Parameter(
            schema_extra={"format": "date-time"}, description="RFC 3339; failed before")] = None,
        tenant: Tenant = None,
    ) -> JobPage:
        api: ApiContext = state.api
        tenant = listed_tenant(request.auth, tenant)
        if error is not None and "\x00" in error:
            raise ApiError(422, "error: contains a NUL character", field="error")
        query = DeadLetterQuery(
            queue=queue, task=task, error=error,
            failed_after=_timestamp("failed_after", failed_after),
            failed_before=_timestamp("failed_before", failed_before))
        before = decode_cursor(cursor) if cursor else None
        async with api.deadline():
            found = await _outbox(api).list_dead_letters(tenant, query, before, limit + 1)
        page, cursor = page_of(found, limit)
        return JobPage([JobOut.of(j) for j in page], cursor)

    @post("/redrive", opt={"scope": WRITE}, status_code=200,
          summary="Send dead letters back to work with a fresh attempt budget",
          responses=_problems(400, 401, 403, 413, 422, 503))
    async def redrive(self, request: Request[Any, Principal, Any], state: State,
                      data: JSONBody[RedriveSpec]) -> RedriveResult:
        api: ApiContext = state.api
        tenant = request.auth.tenant
        outbox = _outbox(api)
        # Deliberately no overall deadline: a large redrive is many short pages.
        if data.ids is not None:
            done = await deadletters.redrive_ids(outbox, api.store, api.dispatch, tenant,
                                                 data.ids, dry_run=data.dry_run)
        else:
            f = data.filter
            assert f is not None
            query = DeadLetterQuery(queue=f.queue, task=f.task, error=f.error,
                                    failed_after=f.failed_after, failed_before=f.failed_before)
            done = await deadletters.redrive_matching(outbox, api.dispatch, tenant, query,
                                                      data.limit, dry_run=data.dry_run)
        return RedriveResult(done.matched, 0 if data.dry_run else len(done.ids), done.ids)


SubscriptionId = Annotated[uuid.UUID, Parameter(description="subscription id")]


class SubscriptionController(Controller):
    path = "/subscriptions"
    tags = ["notifications"]

    @post("/", opt={"scope": SUBSCRIPTIONS}, status_code=201,
          summary="Subscribe a webhook or email addresses to events",
          responses=_problems(400, 401, 403, 413, 422, 503))
    async def create(self, request: Request[Any, Principal, Any], state: State,
                     data: JSONBody[SubscriptionSpec]) -> SubscriptionCreated:
        api: ApiContext = state.api
        if data.queue is not None:  # one no job can be in would never hear of one
            api.submitter.quotas.check_queue(data.queue, "queue")
        if data.webhook is not None:
            await api.submitter.targets.webhook(data.webhook, "webhook")
        async with api.deadline():
            sub = await _outbox(api).insert_subscription(
                request.auth.tenant, list(dict.fromkeys(data.events)), data.queue, data.task,
                data.webhook, list(dict.fromkeys(data.email)) if data.email else None)
        out = SubscriptionOut.of(sub)
        return SubscriptionCreated(*(getattr(out, f) for f in out.__struct_fields__),
                                   secret=sub.secret or "")

    @get("/", opt={"scope": SUBSCRIPTIONS}, summary="The tenant's subscriptions, newest first",
         responses=_problems(400, 401, 403, 422, 503))
    async def list_subscriptions(
        self, request: Request[Any, Principal, Any], state: State,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, Parameter(max_length=64)] = None,
    ) -> SubscriptionPage:
        api: ApiContext = state.api
        before = decode_cursor(cursor) if cursor else None
        async with api.deadline():
            found = await _outbox(api).list_subscriptions(request.auth.tenant, before,
                                                          limit + 1)
        page, cursor = page_of(found, limit)
        return SubscriptionPage([SubscriptionOut.of(s) for s in page], cursor)

    @delete("/{subscription_id:uuid}", opt={"scope": SUBSCRIPTIONS}, status_code=204,
            summary="Delete a subscription",
            responses=_problems(400, 401, 403, 404, 503))
    async def remove(self, request: Request[Any, Principal, Any], state: State,
                     subscription_id: SubscriptionId) -> None:
        api: ApiContext = state.api
        async with api.deadline():
            deleted = await _outbox(api).delete_subscription(subscription_id,
                                                             request.auth.tenant)
        if not deleted:
            raise ApiError(404, f"no subscription {subscription_id} for this tenant")

    @get("/webhook-secret", opt={"scope": SUBSCRIPTIONS},
         summary="The secret that signs the webhooks of jobs' notify",
         responses=_problems(401, 403, 503))
    async def webhook_secret(self, request: Request[Any, Principal, Any],
                             state: State) -> WebhookSecret:
        api: ApiContext = state.api
        async with api.deadline():
            return WebhookSecret(await _outbox(api).webhook_secret(request.auth.tenant))

    @post("/webhook-secret/rotate", opt={"scope": SUBSCRIPTIONS}, status_code=200,
          summary="Replace the tenant's webhook secret (the old one stops at once)",
          responses=_problems(401, 403, 503))
    async def rotate_webhook_secret(self, request: Request[Any, Principal, Any],
                                    state: State) -> WebhookSecret:
        api: ApiContext = state.api
        async with api.deadline():
            return WebhookSecret(
                await _outbox(api).rotate_webhook_secret(request.auth.tenant))


class JobNotificationController(Controller):
    path = "/tasks"
    tags = ["tasks"]

    @get("/{job_id:uuid}/notifications", opt={"scope": READ},
         summary="Deliveries of a job's events (webhooks, email, dead letter)",
         responses=_problems(400, 401, 403, 404, 422, 503))
    async def notifications(self, request: Request[Any, Principal, Any], state: State,
                            job_id: JobId) -> NotificationList:
        api: ApiContext = state.api
        async with api.deadline():
            await _readable_job(api, request.auth, job_id)
            return NotificationList(await _outbox(api).job_notifications(job_id))

