"""From job specs to jobs: task and payload checks, retry policy, and group commit.

Single submits that arrive while an INSERT is in flight wait for it and then go together
in the next one (one statement, one Redis call for all of them): under load this turns
many small transactions into a few larger ones, and an idle system pays no added wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from taskflow import logs
from taskflow.adapters.postgres import InsertResult
from taskflow.api.errors import BACKEND_ERRORS, ApiError, Unavailable, located
from taskflow.api.quotas import Quotas
from taskflow.api.schemas import MAX_BATCH, JobOut, JobSpec, NotifySpec
from taskflow.api.targets import TargetCheck
from taskflow.config import Settings
from taskflow.jobs import submit
from taskflow.models import DispatchEntry, Job, JobNotify, NewJob, UnknownUpstreams
from taskflow.runtime import Stores
from taskflow.worker.registry import Registry

log = logging.getLogger(__name__)

# A JSON \u0000 escape (not an escaped backslash followed by "u0000").
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# Levels of arrays and objects a payload may nest (Ruby's JSON and Rails stop at 100 too).
# Around 1,000 a job could be stored but not read back: encoding it hit Python's
# recursion limit, a 500 on every GET that showed it.
MAX_PAYLOAD_DEPTH = 100


class KnownTasks:
    """Task names the API accepts, and the payload type of each handler that has one."""

    def __init__(self, registry: Registry, extra: Sequence[str], reject_unknown: bool) -> None:
        self.payload_types: dict[str, Any] = {}
        for name in registry.names():
            handler = registry.get(name)
            if handler is not None and handler.payload_type is not None:
                self.payload_types[name] = handler.payload_type
        self.names = frozenset(registry.names()) | frozenset(extra)
        self.reject_unknown = reject_unknown

    def check(self, spec: JobSpec, where: str) -> None:
        if self.reject_unknown and spec.task not in self.names:
            raise ApiError(
                422, f"{where}task: no worker knows the task {spec.task!r} (known: "
                f"{', '.join(sorted(self.names))}; see api.known_tasks)", field=f"{where}task")
        payload_type = self.payload_types.get(spec.task)
        if payload_type is not None:
            try:
                msgspec.convert(spec.payload, payload_type)
            except msgspec.ValidationError as exc:
                field, text = located(exc, f"{where}payload")
                raise ApiError(422, f"{field}: {text} (payload of task {spec.task!r})",
                               field=field) from None


class _Waiting:
    """A single submit waiting for its group commit."""

    __slots__ = ("job", "answer", "deadline", "sent", "dropped")

    def __init__(self, job: NewJob, answer: asyncio.Future[tuple[bool, JobOut]],
                 deadline: float) -> None:
        self.job = job
        self.answer = answer
        self.deadline = deadline  # loop time after which, unsent, it is a 503
        self.sent = False  # its INSERT is on its way: it may be created
        self.dropped = False  # its caller gave up before it was sent: never send it


class Submitter:
    """Validates specs into :class:`NewJob` and submits them (PostgreSQL, then Redis)."""

    def __init__(self, settings: Settings, stores: Stores, known: KnownTasks) -> None:
        self.settings = settings
        self.stores = stores
        self.known = known
        self.quotas = Quotas(settings, stores.store)
        self.targets = TargetCheck(settings.outbound)
        self.max_payload = settings.api.max_payload_bytes
        self.max_inflight = min(settings.api.group_commits, settings.database.pool_max)
        self.max_pending = settings.api.max_pending_submits
        self.timeout = settings.api.backend_timeout
        self._pending: collections.deque[_Waiting] = collections.deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None

    def new_job(self, spec: JobSpec, tenant: str, where: str = "") -> NewJob:
        self.known.check(spec, where)
        timeout = self.quotas.check_spec(spec, where)
        encoded = msgspec.json.encode(spec.payload)
        size = len(encoded)
        if b"\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
            raise ApiError(422, f"{where}payload: contains a NUL character (\\u0000), which "
                           "cannot be stored", field=f"{where}payload")
        for name, text in (("idempotency_key", spec.idempotency_key or ""),
                           *((f"labels.{k}", k + v) for k, v in spec.labels.items())):
            if "\x00" in text:
                raise ApiError(422, f"{where}{name}: contains a NUL character",
                               field=f"{where}{name}")
        if size > self.max_payload:
            raise ApiError(413, f"{where}payload: {size} bytes is over the limit of "
                           f"{self.max_payload} (api.max_payload_bytes)", field=f"{where}payload")
        # Each level takes two bytes at least: a small payload cannot be too deep.
        if size > 2 * MAX_PAYLOAD_DEPTH and _deeper_than(spec.payload, MAX_PAYLOAD_DEPTH):
            raise ApiError(422, f"{where}payload: arrays and objects nested more than "
                           f"{MAX_PAYLOAD_DEPTH} levels deep", field=f"{where}payload")
        policy = self.settings.policy_for(spec.task)
        retry_policy = None
        if spec.backoff is not None:
            changes = {k: v for k, v in msgspec.structs.asdict(spec.backoff).items()
                       if v is not None}
            retry_policy = msgspec.structs.replace(policy, **changes)
        return NewJob(
            task=spec.task, payload=spec.payload, queue=spec.queue, priority=spec.priority,
            tenant=tenant, run_at=spec.run_at, delay=spec.delay,
            max_attempts=spec.max_attempts or policy.max_attempts, retry_policy=retry_policy,
            timeout=timeout, idempotency_key=spec.idempotency_key, labels=spec.labels,
            depends_on=tuple(spec.depends_on), notify=_notify(spec.notify),
        )

    async def check_targets(self, jobs: Sequence[NewJob], wheres: Sequence[str]) -> None:
        """422 for a job whose ``notify.webhook`` the notifier could not call (does not
        resolve, or resolves to a private address); each URL is checked once."""
        first: dict[str, str] = {}  # URL -> the field that names it first
        for job, where in zip(jobs, wheres):
            if job.notify is not None and job.notify.webhook is not None:
                first.setdefault(job.notify.webhook, f"{where}notify.webhook")
        await self.targets.webhooks(first)

    async def submit_batch(self, jobs: Sequence[NewJob]) -> list[uuid.UUID]:
        """All or none, in one statement; ids in the order given."""
        return _Answers(await self._insert(jobs)).ids(jobs)

    async def _insert(self, jobs: Sequence[NewJob]) -> InsertResult:
        await self.quotas.check_active(jobs)
        try:
            return await submit(self.stores.store, self.stores.dispatch, jobs)
        except UnknownUpstreams as exc:
            raise _unknown_upstreams(jobs, exc) from None

    async def submit_one(self, job: NewJob) -> tuple[bool, JobOut]:
        """(created, the job): an idempotent replay gives (False, the first job).

        A submit waits at most ``api.backend_timeout`` for its turn in the group commit
        (503 after that, and the job is never sent: see :meth:`_expire`); once its INSERT
        is on its way it waits for the answer, bounded by ``database.command_timeout``, so
        that a 503 is never given for a job that was created."""
        # A job with upstreams goes alone: an unknown upstream must fail only its request.
        if job.depends_on:
            created, out = _Answers(await self._insert([job])).of(job)
            if created:  # its DAG fields (state, pending upstreams) come from the row
                stored = await self.stores.store.get_job(job.id)
                out = JobOut.of(stored) if stored is not None else out
            return created, out
        if not self.settings.api.group_commit:
            return _Answers(await self._insert([job])).of(job)
        if len(self._pending) >= self.max_pending:
            raise Unavailable(f"{len(self._pending)} submits are waiting for PostgreSQL "
                              "(api.max_pending_submits); retry shortly")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(job, loop.create_future(), loop.time() + self.timeout)
        self._pending.append(waiting)
        if self._inflight < self.max_inflight:
            self._flush()
        if self._pending and self._expiry is None:  # left waiting (a batch holds 5,000)
            self._expiry = loop.call_at(self._pending[0].deadline, self._expire)
        try:
            # Every setter of the answer checks done(): a caller that goes away cancels
            # its future, nothing else. Once sent, its INSERT's answer is the truth.
            return await waiting.answer
        except asyncio.CancelledError:
            waiting.dropped = True  # the client went away: nobody wants it if unsent
            raise

    def _expire(self) -> None:
        """503 for the submits that waited ``api.backend_timeout`` without being sent.
        One timer for the whole queue (deadlines come in arrival order), not one per
        request: a timer per submit was ~5 % of the API's CPU under load."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = self._pending
        while pending and pending[0].deadline <= now:
            waiting = pending.popleft()
            waiting.dropped = True
            _fail([waiting], Unavailable(
                f"PostgreSQL did not take the job within {self.timeout:g}s "
                "(api.backend_timeout); it was not created, retry"))
        if pending:
            self._expiry = loop.call_at(pending[0].deadline, self._expire)

    def _flush(self) -> None:
        batch: list[_Waiting] = []
        while self._pending and len(batch) < MAX_BATCH:
            waiting = self._pending.popleft()
            if not waiting.dropped:
                waiting.sent = True
                batch.append(waiting)
        if not batch:
            return
        self._inflight += 1
        # Not in the context of the request that happens to flush (nor of the commit
        # before it): the batch holds many tenants' jobs, its logs belong to none.
        context = contextvars.copy_context()
        context.run(logs.bind, tenant=None)
        task = asyncio.create_task(self._commit(batch), context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _commit(self, batch: list[_Waiting]) -> None:
        try:
            await self._answer(batch)
        finally:
            self._inflight -= 1
            if self._pending:
                self._flush()

    async def _answer(self, batch: list[_Waiting]) -> None:
        """Insert the batch and settle each request's future with its answer. A tenant
        over its quota fails only its own submits (see :meth:`Quotas.refusals`)."""
        try:
            refusals = await self.quotas.refusals([w.job for w in batch])
        except Exception as exc:  # PostgreSQL away: nobody's job was sent
            _fail(batch, exc)
            return
        admitted = []
        for waiting, refused in zip(batch, refusals):
            if refused is None:
                admitted.append(waiting)
            else:
                _fail([waiting], refused)
        if admitted:
            await self._send(admitted)

    async def _send(self, batch: list[_Waiting]) -> None:
        try:
            answers = _Answers(await submit(self.stores.store, self.stores.dispatch,
                                            [w.job for w in batch]))
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, BACKEND_ERRORS):
                # Something in one request broke the shared statement: halve the batch
                # until it goes alone, so that only it fails. One half after the other:
                # a few statements per request that breaks it (2 log2 n), where one
                # statement per request all at once would take every pooled connection
                # from the submits waiting behind this commit.
                half = len(batch) // 2
                await self._send(batch[:half])
                await self._send(batch[half:])
                return
            _fail(batch, exc)
            return
        for waiting in batch:
            if waiting.answer.done():
                continue
            try:
                waiting.answer.set_result(answers.of(waiting.job))
            except Exception as err:  # noqa: BLE001 - its request answers it (ApiError, or a 500)
                _fail([waiting], err)

    async def close(self) -> None:
        """Waits for the group commits, including those the ones in flight start for the
        submits waiting behind them (the waiting are sent, not dropped)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail(batch: Sequence[_Waiting], exc: BaseException) -> None:
    for waiting in batch:
        if not waiting.answer.done():
            waiting.answer.set_exception(exc)
            waiting.answer.exception()  # retrieved: a gone client must not warn


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded JSON) nests arrays and objects more than ``limit``
    levels deep; level by level, without recursion."""
    level, depth = [value], 0
    while containers := [v for v in level if isinstance(v, dict | list)]:
        depth += 1
        if depth > limit:
            return True
        level = [child for v in containers
                 for child in (v.values() if isinstance(v, dict) else v)]
    return False


def _notify(spec: NotifySpec | None) -> JobNotify | None:
    if spec is None:
        return None
    return JobNotify(on=tuple(dict.fromkeys(spec.on)), webhook=spec.webhook,
                     email=tuple(dict.fromkeys(spec.email)))


def _unknown_upstreams(jobs: Sequence[NewJob], exc: UnknownUpstreams) -> ApiError:
    """422 naming the ids (and, in a batch, the first job that names one)."""
    missing = set(exc.ids)
    where = ""
    if len(jobs) > 1:
        index = next(i for i, j in enumerate(jobs) if missing & set(j.depends_on))
        where = f"tasks[{index}]."
    listed = ", ".join(str(i) for i in exc.ids)
    return ApiError(422, f"{where}depends_on: no job {listed} for this tenant",
                    field=f"{where}depends_on")


class _Answers:
    """What an insert gave each job: created, or the first job of its idempotency key."""

    def __init__(self, result: InsertResult) -> None:
        self.result = result
        self.created = {e.id: e for e in result.created}
        self.existing = {(j.tenant, j.idempotency_key): j for j in result.existing}

    def of(self, job: NewJob) -> tuple[bool, JobOut]:
        entry = self.created.get(job.id)
        if entry is not None:
            return True, _created(job, entry, self.result.created_at[job.id])
        return False, JobOut.of(self.first(job))

    def first(self, job: NewJob) -> Job:
        found = self.existing.get((job.tenant, job.idempotency_key))
        if found is None:
            raise ApiError(409, "the job was neither created nor found by its idempotency "
                           "key (deleted meanwhile?); submit it again")
        return found

    def ids(self, jobs: Sequence[NewJob]) -> list[uuid.UUID]:
        """Ids in the order given (a repeated idempotency key gives the first job's)."""
        return [job.id if job.id in self.created else self.first(job).id for job in jobs]


def _created(job: NewJob, entry: DispatchEntry, created_at: datetime) -> JobOut:
    return JobOut(
        id=job.id, task=job.task, queue=job.queue, state=entry.state, priority=job.priority,
        payload=job.payload, attempts=0, max_attempts=job.max_attempts, run_at=entry.run_at,
        created_at=created_at, started_at=None, finished_at=None, result=None, error=None,
        labels=job.labels, tenant=job.tenant, idempotency_key=job.idempotency_key,
        timeout=job.timeout, cancel_requested=False,
        notify=None if job.notify is None else msgspec.structs.asdict(job.notify),
    )
