"""What one tenant may ask of a queue. Queues are declared by the operator and shared by
all tenants; these checks keep one tenant from crowding the others out of one.

Checked at submit, by the API (the tenant boundary): the queue must be declared; the
priority, how far ahead the job is due and its timeout stay within the queue's limits
(422 naming the field); and a tenant's unfinished jobs in a queue stay under
``max_active`` (429). The last is one indexed count per (tenant, queue) of a submitted
batch, bounded by the limit itself, and only for queues that have one. Concurrent
submits of one tenant are not serialized: together they may pass the limit by what they
add at once, which bounds a flood all the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence, Set
from datetime import UTC, datetime

from taskflow.adapters.postgres import PostgresStore
from taskflow.api.errors import ApiError
from taskflow.api.schemas import JobSpec, Problem
from taskflow.config import Settings
from taskflow.models import NewJob

EARLIEST_RUN_AT = datetime(1970, 1, 1, tzinfo=UTC)


class QuotaExceeded(ApiError):
    """A tenant has as many unfinished jobs in a queue as it may have (429)."""

    def __init__(self, detail: str, field: str) -> None:
        super().__init__(429, detail, field=field, headers={"Retry-After": "1"})

    def problem(self) -> Problem:
        return Problem("Too Many Requests", 429, self.detail, field=self.field)


class Quotas:
    """The queue checks of submitted jobs (see the module's docstring)."""

    def __init__(self, settings: Settings, store: PostgresStore) -> None:
        self.settings = settings
        self.store = store
        self.queues = frozenset(settings.queues)

    def check_spec(self, spec: JobSpec, where: str = "") -> float | None:
        """422 naming the field when ``spec`` breaks its queue's limits; returns the
        timeout the job gets (its own, or the queue's bound when it has none)."""
        self.check_queue(spec.queue, f"{where}queue")
        limits = self.settings.limits_for(spec.queue)
        if spec.max_attempts is not None and spec.max_attempts > limits.max_attempts:
            raise ApiError(422, f"{where}max_attempts: at most {limits.max_attempts} in queue "
                           f"{spec.queue!r}", field=f"{where}max_attempts")
        if spec.priority > limits.max_priority:
            raise ApiError(422, f"{where}priority: at most {limits.max_priority} in queue "
                           f"{spec.queue!r}", field=f"{where}priority")
        ahead = spec.delay
        if spec.run_at is not None:
            if spec.run_at < EARLIEST_RUN_AT:
                # Nothing is due earlier than now anyway, and the first instants of year 1
                # are PostgreSQL's -infinity to asyncpg, or no Python time once in UTC.
                raise ApiError(422, f"{where}run_at: not before {EARLIEST_RUN_AT:%Y-%m-%d}",
                               field=f"{where}run_at")
            ahead = (spec.run_at - datetime.now(UTC)).total_seconds()
        if ahead is not None and ahead > limits.max_delay:
            name = "run_at" if spec.run_at is not None else "delay"
            raise ApiError(422, f"{where}{name}: at most {limits.max_delay:g} seconds ahead in "
                           f"queue {spec.queue!r}", field=f"{where}{name}")
        if not limits.max_timeout:
            return spec.timeout
        if spec.timeout is not None:
            if spec.timeout > limits.max_timeout:
                raise ApiError(422, f"{where}timeout: at most {limits.max_timeout:g} seconds "
                               f"in queue {spec.queue!r}", field=f"{where}timeout")
            return spec.timeout
        own = self.settings.timeout_for(spec.task)
        return own if 0 < own <= limits.max_timeout else limits.max_timeout

    def check_queue(self, queue: str, field: str) -> None:
        """422 naming ``field`` when ``queue`` is not a declared one."""
        if queue not in self.queues:
            listed = ", ".join(sorted(self.queues)[:20])
            raise ApiError(422, f"{field}: no queue {queue!r} (declared: {listed}; "
                           "see the queues setting)", field=field)

    async def check_active(self, jobs: Sequence[NewJob]) -> None:
        """429 when a batch would take a tenant past ``max_active`` in a queue."""
        adding = Counter((j.tenant, j.queue) for j in jobs)
        bounds = self._bounds(adding)
        if not bounds:
            return
        for key, bound in bounds.items():
            if adding[key] > bound:  # never fits: waiting would not help
                raise ApiError(422, f"queue: {adding[key]} jobs for queue {key[1]!r} in one "
                               f"request; a tenant may have at most {bound} unfinished "
                               "jobs there", field="queue")
        counts = await self._counts(bounds)
        for key, bound in bounds.items():
            if counts.get(key, 0) + adding[key] > bound:
                raise _exceeded(key, counts.get(key, 0), bound, adding[key])

    async def refusals(self, jobs: Sequence[NewJob]) -> list[QuotaExceeded | None]:
        """For single submits committed together (each its own request): the 429 of each
        job that would take its tenant past ``max_active`` in its queue, ``None`` for the
        others. A tenant's jobs are admitted in the order given while they fit, so one
        tenant over its quota fails only its own requests, and the batch never holds
        more of a tenant's jobs than its quota has room for. An idempotent replay (of a
        job that exists, or of one admitted before it in the batch) creates nothing: it
        takes no room and is not refused (its answer is the first job)."""
        bounds = self._bounds({(j.tenant, j.queue) for j in jobs})
        if not bounds:
            return [None] * len(jobs)
        counts = await self._counts(bounds)
        out = _admitted(jobs, bounds, counts, frozenset())
        # Only when some are refused: are keyed jobs of theirs replays of existing jobs?
        keys: dict[str, set[str]] = {}
        refused = {(j.tenant, j.queue) for j, r in zip(jobs, out) if r is not None}
        for job in jobs:
            if (job.tenant, job.queue) in refused and job.idempotency_key is not None:
                keys.setdefault(job.tenant, set()).add(job.idempotency_key)
        if not keys:
            return out
        taken = {(tenant, key) for tenant, wanted in keys.items()
                 for key in await self.store.idempotency_keys_taken(tenant, sorted(wanted))}
        return _admitted(jobs, bounds, counts, taken) if taken else out

    def _bounds(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The (tenant, queue) keys whose queue bounds ``max_active``, with the bound."""
        bounds = {key: self.settings.limits_for(key[1]).max_active for key in keys}
        return {key: bound for key, bound in bounds.items() if bound}

    async def _counts(self, bounds: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        return await self.store.count_active_jobs(list(bounds), max(bounds.values()))


def _admitted(jobs: Sequence[NewJob], bounds: dict[tuple[str, str], int],
              counts: dict[tuple[str, str], int],
              taken: Set[tuple[str, str]]) -> list[QuotaExceeded | None]:
    """See :meth:`Quotas.refusals`; ``taken``: the (tenant, idempotency key) of jobs that
    exist."""
    room = {key: bound - counts.get(key, 0) for key, bound in bounds.items()}
    admitted: set[tuple[str, str]] = set()  # (tenant, idempotency key) admitted here
    out: list[QuotaExceeded | None] = []
    for job in jobs:
        key = (job.tenant, job.queue)
        idem = None if job.idempotency_key is None else (job.tenant, job.idempotency_key)
        if key not in room or (idem is not None and (idem in taken or idem in admitted)):
            out.append(None)
        elif room[key] > 0:
            room[key] -= 1
            if idem is not None:
                admitted.add(idem)
            out.append(None)
        else:
            # What it has once the submits admitted before it in this batch are in.
            out.append(_exceeded(key, bounds[key] - room[key], bounds[key], 1))
    return out


def _exceeded(key: tuple[str, str], count: int, bound: int, adding: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"queue: this tenant has {count} unfinished jobs in queue {key[1]!r}; at most "
        f"{bound} (adding {adding}); retry when some have finished", field="queue")
