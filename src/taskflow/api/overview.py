"""The console's overview of queues, made from what :mod:`taskflow.adapters.overview`
reads: pure functions, tested without I/O."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from taskflow.adapters.observe import LiveWorker
from taskflow.adapters.overview import Backlog, Finished, Running
from taskflow.api.ended import Hour, minute_of
from taskflow.api.overview_schemas import Minute, QueueFigures, QueuesOut, WorkerOut


def queue_figures(declared: Sequence[str], backlog: Sequence[Backlog],
                  running: dict[str, int], finished: Sequence[Finished], now: datetime,
                  minutes: int, scan_limit: int) -> tuple[list[QueueFigures], bool]:
    """One row per declared queue (in their order), then any other queue holding jobs
    (sorted); the throughput window is the ``minutes`` minutes up to the current one.
    Also whether the backlog was counted in full: the store reads up to ``scan_limit``
    + 1 waiting jobs, so more than ``scan_limit`` means there were more to count."""
    seen = {b.queue for b in backlog} | set(running) | {f.queue for f in finished}
    names = list(declared) + sorted(seen - set(declared))
    by_queue = {b.queue: b for b in backlog}
    current = minute_of(now)
    window = [current - timedelta(minutes=i) for i in range(minutes - 1, -1, -1)]
    counts: dict[tuple[str, datetime], dict[str, int]] = {}
    failed_hour: dict[str, int] = {}
    for f in finished:
        counts.setdefault((f.queue, f.minute), {})[f.state] = f.n
        if f.state == "failed":
            failed_hour[f.queue] = failed_hour.get(f.queue, 0) + f.n
    rows = []
    for name in names:
        b = by_queue.get(name)
        due = b.oldest_ready_due if b else None
        series = [Minute(m, **{s: counts.get((name, m), {}).get(s, 0)
                               for s in ("succeeded", "failed", "cancelled")})
                  for m in window]
        rows.append(QueueFigures(
            name, b.ready if b else 0, b.scheduled if b else 0, running.get(name, 0),
            b.blocked if b else 0, failed_hour.get(name, 0),
            None if due is None else max(0.0, (now - due).total_seconds()), series))
    complete = sum(b.counted for b in backlog) <= scan_limit
    return rows, complete


def overview(declared: Sequence[str], backlog: Sequence[Backlog],
             ended: Hour, live: Sequence[LiveWorker],
             running: Running, now: datetime, minutes: int,
             scan_limit: int) -> QueuesOut:
    """``GET /queues``: the queue figures and the workers alive (by name)."""
    queues, complete = queue_figures(declared, backlog, running.by_queue, ended.rows, now,
                                     minutes, scan_limit)
    workers = [WorkerOut(w.name, list(w.queues), running.by_worker.get(w.name, 0))
               for w in sorted(live, key=lambda w: w.name)]
    return QueuesOut(now, queues, workers, complete, ended.complete)
