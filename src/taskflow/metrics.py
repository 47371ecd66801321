"""Prometheus metrics of every role, in one place so names and labels stay consistent.

Queue and task names come from clients, so the labels that carry them are capped: each
takes at most ``metrics.max_label_values`` distinct values per process (the first ones
seen), and any later value is exported as ``other``. Every metric below with a ``queue``
or ``task`` label goes through :data:`LABEL_CAP`.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

OTHER = "other"
CAPPED_LABELS = frozenset({"queue", "task"})


class LabelCap:
    """Admits at most ``limit`` distinct values per label name; later new values map to
    :data:`OTHER`. Values already admitted stay admitted, so a series never moves."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def configure(self, limit: int) -> None:
        """Set the cap (``metrics.max_label_values``); values admitted so far stay."""
        self.limit = limit

    def __call__(self, label: str, value: str) -> str:
        seen = self._seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) < self.limit:
            seen.add(value)
            return value
        return OTHER


LABEL_CAP = LabelCap()


class _Capped:
    """Mixin for prometheus-client metrics: ``labels()`` passes queue and task values
    through :data:`LABEL_CAP`."""

    def __init__(self, name: str, documentation: str, labelnames: Any = (),
                 **kwargs: Any) -> None:
        super().__init__(name, documentation, labelnames, **kwargs)  # type: ignore[call-arg]
        names = tuple(labelnames)
        self._tf_names = names
        self._tf_capped = tuple(i for i, n in enumerate(names) if n in CAPPED_LABELS)

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            named = {k: LABEL_CAP(k, str(v)) if k in CAPPED_LABELS else v
                     for k, v in named.items()}
            return super().labels(**named)  # type: ignore[misc]
        if self._tf_capped and len(values) == len(self._tf_names):
            out = list(values)
            for i in self._tf_capped:
                out[i] = LABEL_CAP(self._tf_names[i], str(out[i]))
            values = tuple(out)
        return super().labels(*values)  # type: ignore[misc]


class Counter(_Capped, _Counter):
    pass


class Gauge(_Capped, _Gauge):
    pass


class Histogram(_Capped, _Histogram):
    pass


JOBS_SUBMITTED = Counter("taskflow_jobs_submitted", "Jobs created", ["queue"])
JOBS_STARTED = Counter("taskflow_jobs_started", "Attempts started by workers",
                       ["queue", "task"])
JOBS_FINISHED = Counter(
    "taskflow_jobs_finished", "Attempts ended, by outcome "
    "(succeeded, retried, failed, cancelled)", ["queue", "task", "outcome"])
JOB_DURATION = Histogram(
    "taskflow_job_duration_seconds", "Handler run time of an attempt", ["queue", "task"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800))
OUTCOMES_REFUSED = Counter(
    "taskflow_outcomes_fenced", "Outcomes refused because the attempt's lease was taken over")
LEASES_RESCUED = Counter("taskflow_leases_rescued", "Attempts rescued after their lease expired",
                         ["queue"])
LEASES_RETAKEN = Counter(
    "taskflow_leases_retaken", "Leases Redis lost (flush, empty restart) that a live worker "
    "took back after PostgreSQL confirmed the attempt was still its own", ["queue"])
JOBS_REINDEXED = Counter("taskflow_jobs_reindexed",
                         "Jobs the reconciler indexed in Redis because they were missing")
QUEUE_DEPTH = Gauge("taskflow_queue_depth", "Jobs in the dispatch index, by set",
                    ["queue", "set"])
WORKER_RUNNING = Gauge("taskflow_worker_running_jobs", "Handlers running in this worker")
FLUSH_BATCH = Histogram("taskflow_outcome_batch_size", "Outcomes stored per statement",
                        buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
NOTIFICATIONS = Counter(
    "taskflow_notifications", "Delivery attempts of outbox rows, by channel (dead_letter, "
    "webhook, email) and outcome (delivered, retried, failed)", ["channel", "outcome"])
NOTIFY_DURATION = Histogram(
    "taskflow_notification_batch_seconds", "Time to deliver one channel's share of a batch",
    ["channel"], buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30))
OUTBOX_PENDING = Gauge("taskflow_outbox_pending", "Outbox rows not yet delivered or failed")
