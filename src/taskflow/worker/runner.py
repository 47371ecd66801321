"""Runs one attempt of a job and turns whatever happens into an :class:`Outcome`.

Nothing a handler does may take the worker down: a missing handler, a payload it rejects,
a result that is not JSON, a timeout, any exception (``BaseException`` subclasses
included) ends only that attempt, with an error that says what happened. Only the
cancellation of the attempt itself (lease lost, shutdown) propagates.
"""

from __future__ import annotations

import asyncio
import functools
import linecache
import re
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import msgspec

from taskflow.config import RetryPolicy, Settings
from taskflow.models import Outcome, StartedJob
from taskflow.retry import GiveUp, decide
from taskflow.states import JobState
from taskflow.worker.registry import JobContext, NonRetryableError, Registry, RetryAfter

_decode = msgspec.json.decode
_encode = msgspec.json.encode
MAX_ERROR_CHARS = 8000
# A JSON \u0000 escape (not an escaped backslash followed by "u0000").
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class AttemptError(Exception):
    """An attempt failed before or after the handler ran (retryable unless said)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = _last_frames(exc.__traceback__, 5)
    full = f"{text}\n{tb}" if tb else text
    full = full.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL
    return full if len(full) <= MAX_ERROR_CHARS else full[: MAX_ERROR_CHARS - 3] + "..."


def _last_frames(tb: TracebackType | None, limit: int) -> str:
    """The last ``limit`` frames of a traceback, as ``traceback.format_tb`` shows them but
    without its column carets: on Python 3.11 those re-parse every frame's source line
    with ``ast`` and walk its code positions, which was half of a worker's time when
    10,000 jobs failed at once (bench_notify)."""
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    lines = []
    for frame in frames[-limit:]:
        code = frame.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.tb_lineno}, in {code.co_name}\n')
        source = linecache.getline(code.co_filename, frame.tb_lineno).strip()
        if source:
            lines.append(f"    {source}\n")
    return "".join(lines)


class Runner:
    """Executes attempts with the worker's registry, policies and thread pool."""

    def __init__(self, settings: Settings, registry: Registry, threads: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.registry = registry
        self.threads = threads
        self.max_result = settings.worker.max_result_bytes
        self._policies: dict[tuple[str, str | None], RetryPolicy] = {}

    def policy(self, job: StartedJob) -> RetryPolicy:
        key = (job.task, job.retry_policy)
        policy = self._policies.get(key)
        if policy is None:
            policy = self.settings.policy_for(job.task)
            if job.retry_policy:
                overrides = {k: v for k, v in _decode(job.retry_policy).items() if v is not None}
                policy = msgspec.convert(
                    {**msgspec.structs.asdict(policy), **overrides}, RetryPolicy
                )
            if len(self._policies) < 10_000:
                self._policies[key] = policy
        return policy

    def timeout(self, job: StartedJob) -> float | None:
        seconds = job.timeout if job.timeout is not None else self.settings.timeout_for(job.task)
        return seconds or None

    async def execute(
        self, job: StartedJob, ctx_hook: Any = None, upstream: dict[str, Any] | None = None
    ) -> Outcome:
        """Run one attempt; returns its outcome. Raises only CancelledError when the
        attempt itself is cancelled. ``upstream``: results of the direct upstream jobs."""
        began = time.perf_counter()
        retry_after: float | None = None
        try:
            result = await self._call(job, ctx_hook, upstream)
            try:
                raw = _encode(result)
            except (TypeError, ValueError, OverflowError) as exc:
                raise AttemptError(
                    f"result of task {job.task!r} cannot be stored as JSON: {exc}",
                    retryable=False,
                ) from None
            if len(raw) > self.max_result:
                raise AttemptError(
                    f"result of task {job.task!r} is {len(raw)} bytes as JSON, over the "
                    f"limit of {self.max_result} (worker.max_result_bytes)", retryable=False)
            encoded = raw.decode()
            if "\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
                raise AttemptError(
                    f"result of task {job.task!r} cannot be stored: it contains a NUL "
                    "character (\\u0000), which PostgreSQL's jsonb refuses", retryable=False)
            return Outcome(job.id, job.lease_token, JobState.SUCCEEDED, "succeeded",
                           time.perf_counter() - began, result=encoded)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled: lease lost or shutdown
            error, retryable = _describe_cancel(), True
        except TimeoutError as exc:
            error, retryable = f"timed out after {self.timeout(job)}s", True
            if not isinstance(exc, _JobTimeout):
                error = _describe(exc)
        except RetryAfter as exc:
            error, retryable, retry_after = _describe(exc), True, exc.delay
        except NonRetryableError as exc:
            error, retryable = _describe(exc), False
        except AttemptError as exc:
            error, retryable = str(exc).replace("\x00", "\\x00"), exc.retryable
        except BaseException as exc:  # noqa: BLE001 - see module docstring
            error, retryable = _describe(exc), True
        duration = time.perf_counter() - began
        decision = decide(job.attempts, job.max_attempts, self.policy(job),
                          retryable=retryable, retry_after=retry_after)
        if isinstance(decision, GiveUp):
            return Outcome(job.id, job.lease_token, JobState.FAILED, "failed", duration,
                           error=error)
        state = JobState.SCHEDULED if decision.delay > 0 else JobState.QUEUED
        return Outcome(job.id, job.lease_token, state, "retried", duration, error=error,
                       delay=decision.delay)

    async def _call(
        self, job: StartedJob, ctx_hook: Any, upstream: dict[str, Any] | None
    ) -> Any:
        handler = self.registry.get(job.task)
        if handler is None:
            known = ", ".join(self.registry.names())
            raise AttemptError(f"no handler is registered for task {job.task!r} on this worker "
                               f"(known: {known})")
        try:
            payload = _decode(job.payload)
            if handler.payload_type is not None:
                payload = msgspec.convert(payload, handler.payload_type)
        except msgspec.ValidationError as exc:
            raise AttemptError(f"payload rejected by task {job.task!r}: {exc}",
                               retryable=False) from None
        ctx = JobContext(job_id=job.id, task=job.task, queue=job.queue, attempt=job.attempts,
                         max_attempts=job.max_attempts, tenant=job.tenant, payload=payload,
                         upstream_results=upstream)
        if ctx_hook is not None:
            ctx_hook(ctx)
        timeout = self.timeout(job)
        if handler.is_async:
            call = handler.fn(ctx)
        else:
            loop = asyncio.get_running_loop()
            call = loop.run_in_executor(self.threads, functools.partial(handler.fn, ctx))
        if timeout is None:
            return await call
        try:
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError:
            if ctx.cancelled is not None:
                ctx.cancelled.set()
            raise _JobTimeout() from None


class _JobTimeout(TimeoutError):
    """The job's own timeout (not a TimeoutError raised inside the handler)."""


def _describe_cancel() -> str:
    return "handler raised CancelledError although the attempt was not cancelled"
