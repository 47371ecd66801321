"""Prometheus metrics of every role, in one place so names and labels stay consistent.

Queue and task names come from clients, so the labels that carry them are capped: each
takes at most ``metrics.max_label_values`` distinct values per process (the first ones
seen), and any later value is exported as ``other``. Every metric below with a ``queue``
or ``task`` label goes through :data:`LABEL_CAP`.

Names follow Prometheus conventions: counters end in ``_total`` (prometheus-client adds
it), durations are seconds. Cluster-wide gauges (queue sizes, oldest ready age, workers
alive) live in :mod:`taskflow.stats`; the API's request metrics in
:mod:`taskflow.api.metrics`. README.md lists every metric.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter as _Counter
from prometheus_client import disable_created_metrics
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

# A counter's ``_created`` sample doubles the series and no dashboard reads it.
disable_created_metrics()

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


# Latency buckets: 5 ms to 12 h, so a panel resolves a noop's queue wait and a nightly
# job's run time alike (histogram_quantile interpolates within a bucket).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                   300, 600, 1800, 3600, 7200, 14400, 43200)

# -- throughput --------------------------------------------------------------------------
JOBS_SUBMITTED = Counter("taskflow_jobs_submitted", "Jobs created", ["queue"])
JOBS_STARTED = Counter("taskflow_jobs_started", "Attempts started by workers",
                       ["queue", "task"])
JOBS_FINISHED = Counter(
    "taskflow_jobs_finished", "Attempts ended, by outcome "
    "(succeeded, retried, failed, cancelled)", ["queue", "task", "outcome"])
JOB_RETRIES = Counter("taskflow_job_retries", "Failed attempts that were scheduled to run "
                      "again", ["queue", "task"])
DEAD_LETTERS = Counter("taskflow_dead_letters", "Jobs that failed for good (retries "
                       "exhausted, not retryable, or their last lease lost)", ["queue"])
# -- latency -----------------------------------------------------------------------------
JOB_WAIT = Histogram(
    "taskflow_job_queue_wait_seconds", "From an attempt's due time to its start",
    ["queue"], buckets=LATENCY_BUCKETS)
JOB_DURATION = Histogram(
    "taskflow_job_duration_seconds", "Handler run time of an attempt", ["queue", "task"],
    buckets=LATENCY_BUCKETS)
JOB_END_TO_END = Histogram(
    "taskflow_job_end_to_end_seconds", "From a job's creation to its last attempt's end "
    "(succeeded, failed or cancelled while running)", ["queue"],
    buckets=LATENCY_BUCKETS)
# -- leases and repairs --------------------------------------------------------------------
OUTCOMES_REFUSED = Counter(
    "taskflow_outcomes_fenced", "Outcomes refused because the attempt's lease was taken over")
LEASES_RESCUED = Counter("taskflow_leases_rescued", "Attempts rescued after their lease expired",
                         ["queue"])
LEASES_RETAKEN = Counter(
    "taskflow_leases_retaken", "Leases Redis lost (flush, empty restart) that a live worker "
    "took back after PostgreSQL confirmed the attempt was still its own", ["queue"])
JOBS_REINDEXED = Counter("taskflow_jobs_reindexed",
                         "Jobs the reconciler indexed in Redis because they were missing")
# -- this worker ---------------------------------------------------------------------------
WORKER_RUNNING = Gauge("taskflow_worker_running_jobs", "Handlers running in this worker")
WORKER_SLOTS = Gauge("taskflow_worker_concurrency_slots",
                     "Handlers this worker may run at once (worker.concurrency)")
WORKER_FREE = Gauge("taskflow_worker_free_slots",
                    "Concurrency slots of this worker not running a handler")
FLUSH_BATCH = Histogram("taskflow_outcome_batch_size", "Outcomes stored per statement",
                        buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
# -- the API (request latency is in taskflow.api.metrics) -----------------------------------
AUTH_FAILURES = Counter(
    "taskflow_api_auth_failures", "Requests refused by authentication or authorization, by "
    "reason: missing, malformed, algorithm, unknown_key, signature, expired, audience, "
    "issuer, claims, invalid (other), scope (a valid token lacking the scope)", ["reason"])
