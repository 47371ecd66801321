"""Shared test helpers: running workers in-process and waiting for job states."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from taskflow.config import Settings
from taskflow.jobs import submit
from taskflow.models import Job, NewJob, Outcome
from taskflow.runtime import Stores
from taskflow.states import JobState
from taskflow.supervise import cancel_and_wait
from taskflow.worker.builtins import builtin_registry
from taskflow.worker.maintenance import Maintenance
from taskflow.worker.registry import Registry
from taskflow.worker.worker import Worker


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_for_states(
    stores: Stores, ids: Sequence[Any], states: set[str], timeout: float = 15.0
) -> list[Job]:
    async def check() -> list[Job] | None:
        jobs = await stores.store.get_jobs(list(ids))
        if len(jobs) == len(ids) and all(j.state.value in states for j in jobs):
            return jobs
        return None

    return await wait_until(check, timeout)


async def ends_within(waited: asyncio.Future[Any], seconds: float,
                      *also: asyncio.Future[Any]) -> bool:
    """Whether ``waited`` ends within ``seconds``. If not, it and ``also`` are cancelled
    (more than once: a task under test may drop a cancel) so that the caller fails
    without leaving them running."""
    done, _ = await asyncio.wait({waited}, timeout=seconds)
    if done:
        return True
    for _ in range(3):
        for future in (waited, *also):
            future.cancel()
        await asyncio.sleep(0)
    await asyncio.wait({waited, *also}, timeout=5)
    return False


async def submit_jobs(stores: Stores, *specs: dict[str, Any]) -> list[Any]:
    jobs = [NewJob(**{"max_attempts": 3, **spec}) for spec in specs]
    result = await submit(stores.store, stores.dispatch, jobs)
    return [e.id for e in result.created]


async def start_claimed(stores: Stores, count: int, queue: str = "default") -> list[Any]:
    """Claim up to ``count`` jobs of ``queue`` and start them for worker "w", no worker
    running: the jobs started, their leases in Redis."""
    claims = (await stores.dispatch.claim(queue, count, 10_000)).claims
    return await stores.store.start_jobs(claims, "w")


def outcome_of(job: Any, state: JobState = JobState.SUCCEEDED) -> Outcome:
    """The outcome of a started job's attempt: a result of 1, or the error "boom"."""
    return Outcome(job.id, job.lease_token, state, state.value, 0.0,
                   result="1" if state is JobState.SUCCEEDED else None,
                   error=None if state is JobState.SUCCEEDED else "boom")


@contextlib.asynccontextmanager
async def running_worker(
    stores: Stores,
    settings: Settings,
    registry: Registry | None = None,
    *,
    maintenance: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Worker]:
    """A worker (and its maintenance duties) running in this event loop."""
    builtins, outbound = builtin_registry(settings.outbound)
    merged = builtins.merged(registry) if registry else builtins
    worker = Worker(settings, stores.store, stores.dispatch, merged, **kwargs)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop))]
    if maintenance:
        tasks.append(asyncio.create_task(
            Maintenance(settings, stores.store, stores.dispatch, worker.queues).run()))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(tasks[0], 30)
        await cancel_and_wait(*tasks[1:])
        await outbound.close()
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a server a test started, and SIGKILL it if it is not gone in ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
