"""``/tasks``: submit, batch submit, read, list, cancel and retry jobs.

Every read and write is scoped to the caller's tenant: another tenant's job is a 404.
Tokens with the ``admin`` scope read across tenants.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from datetime import datetime
from typing import Annotated, Any, Protocol, TypeVar

import msgspec
import redis.exceptions
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, Parameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import Receive

from taskflow import jobs
from taskflow.adapters.postgres import JobQuery
from taskflow.api.auth import READ, WRITE, Principal
from taskflow.api.context import ApiContext
from taskflow.api.errors import ApiError, Unavailable
from taskflow.api.events import StreamPace, format_id, job_events, parse_id
from taskflow.api.overview_schemas import JobLinks, LinkedJob
from taskflow.api.watch import wait_until
from taskflow.api.schemas import (
    DEFAULT_PAGE, MAX_PAGE, OPTIONAL_FIELDS, AttemptList, BatchCreated, BatchSpec, JobOut,
    JobPage, JobSpec, Problem,
)
from taskflow.models import Job
from taskflow.states import TERMINAL, JobState

log = logging.getLogger(__name__)


def _problems(*codes: int) -> dict[int, ResponseSpec]:
    text = {400: "malformed request", 401: "missing or invalid token",
            403: "the token lacks the scope", 404: "no such job for this tenant",
            409: "the job is not in a state that allows this", 413: "body or payload too large",
            422: "the request breaks a rule (the message names the field)",
            429: "the tenant has as many unfinished jobs in the queue as it may "
                 "(tenant_limits.max_active)",
            503: "PostgreSQL or Redis unavailable"}
    return {c: ResponseSpec(Problem, description=text[c], media_type="application/problem+json",
                         generate_examples=False)
            for c in codes}


_READ_ERRORS = _problems(400, 401, 403, 404, 422, 503)
_WRITE_ERRORS = _problems(400, 401, 403, 404, 409, 413, 422, 503)
_SUBMIT_ERRORS = _problems(400, 401, 403, 404, 409, 413, 422, 429, 503)

JobId = Annotated[uuid.UUID, Parameter(description="job id (UUIDv7)")]

Wait = Annotated[float | None, Parameter(
    description="seconds, fractional allowed (at most api.max_wait, 60 by default): answer "
                "as soon as the job has ended, or when they have passed with the job as it "
                "is then; the status is the same either way",
    gt=0)]

LastEventId = Annotated[str | None, HeaderParameter(
    name="Last-Event-ID", max_length=40, required=False,
    description="resume after this event (the id: of the last event received)")]

EVENT_STREAM = {200: ResponseSpec(
    str, media_type="text/event-stream", generate_examples=False,
    description="Server-Sent Events, one per state change (event: the state, id: "
                "usable as Last-Event-ID, data: JSON); comment lines as heartbeats; the "
                "stream ends after the terminal state")}


RETRY_MS = 1000  # the reconnection delay a stream's first event asks of EventSource


def wait_seconds(api: ApiContext, wait: float | None) -> float | None:
    """``wait=`` checked against ``api.max_wait`` (None: do not wait)."""
    if wait is not None and not 0 < wait <= api.settings.api.max_wait:
        raise ApiError(422, f"wait: {wait} is not a number of seconds in "
                       f"(0, {api.settings.api.max_wait:g}]", field="wait")
    return wait


async def wait_for_job(api: ApiContext, receive: Receive, job_id: uuid.UUID,
                       reader: str | None, seconds: float) -> Job:
    """The job once it has ended, or as it is after ``seconds`` (see ``api/watch.py``);
    a 404 unless ``reader`` (None: any tenant) may read it, before any waiting."""

    async def read() -> Job:
        async with api.deadline():
            job = await api.reads.job.get(job_id)
        if job is None or (reader is not None and job.tenant != reader):
            raise _not_found(job_id)
        return job

    return await wait_until(api.feed, [job_id], read, lambda j: j.state in TERMINAL,
                            seconds, receive)


async def wait_for_submitted(api: ApiContext, receive: Receive, out: JobOut,
                             seconds: float | None) -> JobOut:
    """``out``, a job just submitted (or replayed), once it has ended or as it is after
    ``seconds`` (None: at once). Should the wait fail (a read times out), ``out`` as the
    submit gave it: the job exists, and an error would have its client submit it again."""
    if seconds is None or out.state in TERMINAL:
        return out
    try:
        return JobOut.of(await wait_for_job(api, receive, out.id, out.tenant, seconds))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("POST /tasks: waiting for job %s failed (%r); answering it as "
                    "submitted", out.id, exc)
        return out


def encode_cursor(job_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(job_id.bytes).decode().rstrip("=")


class _Keyed(Protocol):
    @property
    def id(self) -> uuid.UUID: ...


_Row = TypeVar("_Row", bound=_Keyed)


def page_of(found: list[_Row], limit: int) -> tuple[list[_Row], str | None]:
    """A keyset page from ``limit + 1`` rows read newest first: the first ``limit``, and
    the cursor of the next page (None when the extra row was not there)."""
    page = found[:limit]
    return page, encode_cursor(page[-1].id) if len(found) > limit else None


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError):
        raise ApiError(422, "cursor: not a cursor this API gave out (use next_cursor as is)",
                       field="cursor") from None


_Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]


def _timestamp(name: str, text: str | None) -> datetime | None:
    """RFC 3339 with a time zone, nothing else (no epoch numbers, no naive times)."""
    if text is None:
        return None
    try:
        return msgspec.convert(text, _Timestamp)
    except msgspec.ValidationError as exc:
        raise ApiError(422, f"{name}: {exc} (want RFC 3339, e.g. 2030-01-31T12:00:00Z)",
                       field=name) from None


INCLUDE_PATTERN = r"^(payload|result)(,(payload|result))*$"


def include_param(text: str | None) -> frozenset[str]:
    """The optional fields a list or workflow view should carry (``include=``): a
    comma-separated list of ``payload`` and ``result``; absent means neither."""
    if text is None:
        return frozenset()
    names = text.split(",")
    for name in names:
        if name not in OPTIONAL_FIELDS:
            raise ApiError(422, f"include: unknown field {name!r} (a comma-separated list of "
                           f"{', '.join(OPTIONAL_FIELDS)})", field="include")
    return frozenset(names)


Include = Annotated[str | None, Parameter(
    description="comma-separated fields to add to each job: payload, result (left out by "
                "default: they can be large)",
    schema_extra={"pattern": INCLUDE_PATTERN})]


def _labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError(422, f"label: {pair!r} is not of the form key=value", field="label")
        labels[key] = value
    return labels


Tenant = Annotated[str | None, Parameter(
    max_length=200, description="admin only: this tenant's (default: every tenant's)")]


def listed_tenant(principal: Principal, tenant: str | None) -> str | None:
    """Whose items a listing shows: the caller's tenant, or for an admin the ``tenant=``
    asked for (None: every tenant's); a 403 when anyone else asks for a tenant."""
    if tenant is not None and not principal.is_admin:
        raise ApiError(403, "tenant: only an admin token lists other tenants' items",
                       field="tenant")
    return tenant if principal.is_admin else principal.tenant


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]

    @post("/", opt={"scope": WRITE}, status_code=201, summary="Submit a job",
          responses={200: ResponseSpec(JobOut, generate_examples=False, description="idempotent replay: the first job "
                                       "with this idempotency_key; nothing was created"),
                     **_SUBMIT_ERRORS})
    async def submit(self, request: Request[Any, Principal, Any], state: State,
                     data: JSONBody[JobSpec], wait: Wait = None) -> Response[JobOut]:
        api: ApiContext = state.api
        seconds = wait_seconds(api, wait)
        job = api.submitter.new_job(data, request.auth.tenant)
        await api.submitter.check_targets([job], [""])
        # No deadline around a write: it could fire after the commit and answer 503 for a
        # job that exists. The submitter bounds its own wait (see submit_one).
        created, out = await api.submitter.submit_one(job)
        out = await wait_for_submitted(api, request.receive, out, seconds)
        return Response(out, status_code=201 if created else 200)

    @post("/batch", opt={"scope": WRITE}, status_code=201, summary="Submit jobs, all or none",
          responses=_SUBMIT_ERRORS)
    async def submit_batch(self, request: Request[Any, Principal, Any], state: State,
                           data: JSONBody[BatchSpec]) -> BatchCreated:
        api: ApiContext = state.api
        tenant = request.auth.tenant
        new = [api.submitter.new_job(spec, tenant, f"tasks[{i}].")
               for i, spec in enumerate(data.tasks)]
        await api.submitter.check_targets(new, [f"tasks[{i}]." for i in range(len(new))])
        ids = await api.submitter.submit_batch(new)  # bounded by the stores' own timeouts
        return BatchCreated(ids)

    @get("/", opt={"scope": READ}, summary="List jobs, newest first", responses=_READ_ERRORS)
    async def list_jobs(
        self,
        request: Request[Any, Principal, Any],
        state: State,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="page size")] = DEFAULT_PAGE,
        cursor: Annotated[str | None, Parameter(
            description="next_cursor of the previous page", max_length=64)] = None,
        job_state: Annotated[list[JobState] | None, QueryParameter(
            name="state", description="repeatable: any of these states")] = None,
        queue: Annotated[str | None, Parameter(max_length=128)] = None,
        task: Annotated[str | None, Parameter(max_length=200)] = None,
        label: Annotated[list[str] | None, Parameter(
            description="repeatable key=value: jobs carrying every one of these labels")] = None,
        created_after: Annotated[str | None, Parameter(
            schema_extra={"format": "date-time"},
            description="RFC 3339; created at or after")] = None,
        created_before: Annotated[str | None, Parameter(
            schema_extra={"format": "date-time"},
            description="RFC 3339; created before")] = None,
        tenant: Tenant = None,
        include: Include = None,
    ) -> JobPage:
        api: ApiContext = state.api
        principal = request.auth
        tenant = listed_tenant(principal, tenant)
        extra = include_param(include)
        query = JobQuery(
            limit=limit + 1, before=decode_cursor(cursor) if cursor else None,
            states=tuple(job_state or ()), queue=queue, task=task, labels=_labels(label),
            created_after=_timestamp("created_after", created_after),
            created_before=_timestamp("created_before", created_before),
            with_payload="payload" in extra, with_result="result" in extra,
        )
        async with api.deadline():
            found = await api.store.list_jobs(tenant, query)
        page, cursor = page_of(found, limit)
        return JobPage([JobOut.of(j, extra) for j in page], cursor)

    @get("/{job_id:uuid}", opt={"scope": READ}, summary="A job", responses=_READ_ERRORS)
    async def get_job(self, request: Request[Any, Principal, Any], state: State,
                      job_id: JobId, wait: Wait = None) -> JobOut:
        api: ApiContext = state.api
        seconds = wait_seconds(api, wait)
        if seconds is not None:  # registers, then reads: the one read checks the tenant
            return JobOut.of(await wait_for_job(api, request.receive, job_id,
                                                _reader(request.auth), seconds))
        async with api.deadline():
            job = await _readable_job(api, request.auth, job_id)
        return JobOut.of(job)

    @get("/{job_id:uuid}/events", opt={"scope": READ}, media_type="text/event-stream",
         summary="A job's state changes as Server-Sent Events, until it ends",
         responses={**EVENT_STREAM, **_READ_ERRORS})
    async def events(self, request: Request[Any, Principal, Any], state: State,
                     job_id: JobId, last_event_id: LastEventId = None) -> ServerSentEvent:
        api: ApiContext = state.api
        after = None
        if last_event_id is not None:
            after = parse_id(last_event_id)
            if after is None:
                raise ApiError(422, f"Last-Event-ID: {last_event_id!r} is not an event id "
                               "of this stream (<attempts>.<phase>)", field="Last-Event-ID")
        async with api.deadline():
            await _readable_job(api, request.auth, job_id)
        return ServerSentEvent(_job_stream(api, job_id, after))

    @get("/{job_id:uuid}/attempts", opt={"scope": READ}, summary="A job's finished attempts",
         responses=_READ_ERRORS)
    async def attempts(self, request: Request[Any, Principal, Any], state: State,
                       job_id: JobId) -> AttemptList:
        api: ApiContext = state.api
        async with api.deadline():
            await _readable_job(api, request.auth, job_id)
            found = await api.store.job_attempts(job_id)
        return AttemptList(found)

    @get("/{job_id:uuid}/dependencies", opt={"scope": READ},
         summary="A job's direct upstream and downstream jobs", responses=_READ_ERRORS)
    async def job_links(self, request: Request[Any, Principal, Any], state: State,
                        job_id: JobId,
                        limit: Annotated[int, Parameter(
                            ge=1, le=MAX_PAGE, description="most jobs in each list")] = 100,
                        ) -> JobLinks:
        api: ApiContext = state.api
        async with api.deadline():
            await _readable_job(api, request.auth, job_id)
            # Edges join jobs of one tenant only (a job may depend on its tenant's jobs).
            found = await api.overview.job_links(job_id, limit + 1)
        up = [LinkedJob(j.id, j.task, JobState(j.state), j.node)
              for j in found if j.direction == "up"]
        down = [LinkedJob(j.id, j.task, JobState(j.state), j.node)
                for j in found if j.direction == "down"]
        return JobLinks(up[:limit], down[:limit], len(up) > limit or len(down) > limit)

    @post("/{job_id:uuid}/cancel", opt={"scope": WRITE}, status_code=200,
          summary="Cancel a job (a running one is stopped by its worker)",
          responses={202: ResponseSpec(JobOut, generate_examples=False, description="running: its worker was told to "
                                       "stop it; it ends cancelled"), **_WRITE_ERRORS})
    async def cancel(self, request: Request[Any, Principal, Any], state: State,
                     job_id: JobId) -> Response[JobOut]:
        api: ApiContext = state.api
        try:
            async with api.deadline():
                result = await jobs.cancel(api.store, api.dispatch, job_id, request.auth.tenant)
        except redis.exceptions.RedisError as exc:
            raise Unavailable(f"the cancellation is recorded but the worker could not be "
                              f"told ({type(exc).__name__}); repeat the request") from None
        if result is None:
            raise _not_found(job_id)
        if result.outcome is jobs.Cancel.TOO_LATE:
            raise ApiError(409, f"job {job_id} has already {result.job.state.value}; only "
                           "blocked, scheduled, queued or running jobs can be cancelled")
        status = 202 if result.outcome is jobs.Cancel.REQUESTED else 200
        return Response(JobOut.of(result.job), status_code=status)

    @post("/{job_id:uuid}/retry", opt={"scope": WRITE}, status_code=200,
          summary="Run a failed or cancelled job again", responses=_WRITE_ERRORS)
    async def retry(self, request: Request[Any, Principal, Any], state: State,
                    job_id: JobId) -> JobOut:
        api: ApiContext = state.api
        tenant = request.auth.tenant
        async with api.deadline():
            try:
                job = await jobs.retry(api.store, api.dispatch, job_id, tenant)
            except jobs.UpstreamNotRetried as exc:
                raise ApiError(409, str(exc)) from None
            if job is None:
                current = await api.store.get_tenant_job(job_id, tenant)
                if current is None:
                    raise _not_found(job_id)
                raise ApiError(409, f"job {job_id} is {current.state.value}; only failed or "
                               "cancelled jobs can be retried")
        return JobOut.of(job)


async def _job_stream(api: ApiContext, job_id: uuid.UUID, after: tuple[int, int] | None):
    """The events after ``after`` (see ``api/events.py``), derived from PostgreSQL each
    time the feed says the job changed, and at each heartbeat (so a lost notification
    costs at most a heartbeat); ends after the terminal state."""
    pace = StreamPace(api.settings.api.events_heartbeat, api.settings.api.events_max_seconds)
    first = True
    with api.feed.watch([job_id]) as watcher:
        while True:
            watcher.changed.clear()
            async with api.deadline():
                found = await api.reads.history.get(job_id)
            if found is None:
                return
            job, attempts = found
            for key, event in job_events(job, attempts):
                if after is None or key > after:
                    yield ServerSentEventMessage(
                        data=msgspec.json.encode(event).decode(), event=event.state.value,
                        id=format_id(key), retry=RETRY_MS if first else None)
                    after, first = key, False
            if job.state in TERMINAL or api.feed.closing:  # closing: see ChangeFeed.close
                return
            step = await pace.pause(watcher.changed)
            if step == "stop":  # the client reconnects with Last-Event-ID
                return
            if step == "beat":  # a comment only: no data line, so no event
                yield ServerSentEventMessage(comment="keep-alive", data=None)


def _reader(principal: Principal) -> str | None:
    return None if principal.is_admin else principal.tenant


async def _readable_job(api: ApiContext, principal: Principal, job_id: uuid.UUID) -> Job:
    """The job if the caller may read it (its tenant's, or any for an admin); else 404."""
    job = await api.store.get_tenant_job(job_id, _reader(principal))
    if job is None:
        raise _not_found(job_id)
    return job


def _not_found(job_id: uuid.UUID) -> ApiError:
    return ApiError(404, f"no job {job_id} for this tenant")
