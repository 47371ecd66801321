"""Cluster-wide gauges: queue sizes by state, the age of each queue's oldest ready job,
and the workers alive.

A scrape never touches the stores: a supervised refresher reads them every
``metrics.stats_interval`` seconds (one Redis round trip for all queues, one bounded
PostgreSQL query, one ``HGETALL``; see :mod:`taskflow.adapters.observe`) and the collector
serves the last snapshot. So a scrape costs the same with an empty queue as with ten
million jobs, and a burst of scrapes adds no load to Redis or PostgreSQL. The oldest
ready age is computed at scrape time from the oldest due time, so it keeps growing between
refreshes.

The API (and ``taskflow dev``) reports every declared queue, so a queue nobody serves
still shows its backlog; a worker reports the queues it serves. Dashboards take ``max``
over the processes reporting a queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from taskflow.adapters.observe import Observer
from taskflow.metrics import LABEL_CAP, REGISTRY, _escape_label
from taskflow.supervise import every

log = logging.getLogger(__name__)

STATES = ("ready", "scheduled", "running", "blocked")
# Unfinished jobs the blocked count looks at per refresh (see queries.sql blocked_counts).
BLOCKED_SCAN_LIMIT = 100_000


class Snapshot:
    """What the last refresh read, by (capped) queue label."""

    def __init__(self) -> None:
        self.sizes: dict[str, dict[str, int]] = {}
        self.oldest_due: dict[str, float | None] = {}  # Unix seconds, this host's clock
        self.workers: dict[str, int] = {}
        self.workers_alive = 0
        self.refreshed = 0.0  # Unix seconds; 0 before the first refresh
        self._fixed = ""  # the lines that change only with a refresh, made once

    def fixed_text(self) -> str:
        """Queue sizes and workers: the same text for every scrape until the next
        refresh, so it is made once."""
        if not self._fixed:
            jobs = [_HEAD_JOBS]
            workers = [_HEAD_WORKERS]
            for queue, row in self.sizes.items():
                q = _escape_label(queue)
                for state, n in row.items():
                    jobs.append(f'taskflow_queue_jobs{{queue="{q}",state="{state}"}} {n}.0\n')
                workers.append(f'taskflow_queue_workers{{queue="{q}"}} '
                               f'{self.workers.get(queue, 0)}.0\n')
            self._fixed = "".join(jobs + workers) + (
                f"{_HEAD_ALIVE}taskflow_workers_alive {self.workers_alive}.0\n")
        return self._fixed


class ClusterStats:
    """:meth:`refresh` reads the stores, :meth:`render` serves the last snapshot. One per
    process, part of :data:`taskflow.metrics.REGISTRY`."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    async def refresh(self, observer: Observer, queues: Sequence[str]) -> None:
        sizes = await observer.queue_sizes(queues)
        blocked = await observer.blocked_counts(BLOCKED_SCAN_LIMIT)
        workers = await observer.live_workers()
        snap = Snapshot()
        skew = 0.0
        for queue in queues:
            label = LABEL_CAP("queue", queue)
            s = sizes[queue]
            skew = time.time() - s.now_ms / 1000
            row = snap.sizes.setdefault(label, dict.fromkeys(STATES, 0))
            row["ready"] += s.ready
            row["scheduled"] += s.scheduled
            row["running"] += s.running
            row["blocked"] += blocked.get(queue, 0)
            due = None if s.oldest_ready_due_ms is None else s.oldest_ready_due_ms / 1000 + skew
            old = snap.oldest_due.get(label)
            snap.oldest_due[label] = due if old is None or (due is not None and due < old) \
                else old
            snap.workers.setdefault(label, 0)
        served = set(queues)
        for w in workers:
            for queue in set(w.queues) & served:
                snap.workers[LABEL_CAP("queue", queue)] += 1
        snap.workers_alive = len(workers)
        snap.refreshed = time.time()
        self.snapshot = snap

    def render(self) -> str:
        """The gauges as exposition text (see :func:`taskflow.metrics.page`)."""
        snap = self.snapshot
        if not snap.refreshed:
            return ""
        now = time.time()
        ages = [_HEAD_AGE]
        for queue, due in snap.oldest_due.items():
            age = 0.0 if due is None else max(0.0, now - due)
            ages.append(f'taskflow_queue_oldest_ready_age_seconds{{queue="{_escape_label(queue)}"}}'
                        f" {age!r}\n")
        return (snap.fixed_text() + "".join(ages) + _HEAD_STATS_AGE
                + f"taskflow_queue_stats_age_seconds {now - snap.refreshed!r}\n")


def _head(name: str, text: str) -> str:
    return f"# HELP {name} {text}\n# TYPE {name} gauge\n"


_HEAD_JOBS = _head("taskflow_queue_jobs", "Jobs of a queue by state: ready (due, waiting for "
                   "a worker), scheduled (due later), running (leased), blocked (waiting on "
                   "upstream jobs)")
_HEAD_AGE = _head("taskflow_queue_oldest_ready_age_seconds", "How long the oldest ready job "
                  "of a queue has been due (0 when none is ready)")
_HEAD_WORKERS = _head("taskflow_queue_workers", "Workers alive (heartbeating) that serve a "
                      "queue")
_HEAD_ALIVE = _head("taskflow_workers_alive", "Workers whose presence heartbeat is current")
_HEAD_STATS_AGE = _head("taskflow_queue_stats_age_seconds", "Seconds since the queue gauges "
                        "were read from the stores")


CLUSTER_STATS = ClusterStats()
REGISTRY.collectors.append(CLUSTER_STATS.render)


async def refresh_forever(observer: Observer, queues: Sequence[str], interval: float) -> None:
    """The refresher duty (run it under :func:`taskflow.supervise.supervised`)."""
    await every(interval, lambda: CLUSTER_STATS.refresh(observer, list(queues)))
