"""Prometheus metrics of every role, in one place so names and labels stay consistent.

Queue and task names come from clients, so the labels that carry them are capped: each
takes at most ``metrics.max_label_values`` distinct values per process (the first ones
seen), and any later value is exported as ``other``. Every metric here goes through
:data:`LABEL_CAP` for its ``queue`` and ``task`` labels.

Names follow Prometheus conventions: counters end in ``_total``, durations are seconds,
no ``_created`` samples. Cluster-wide gauges (queue sizes, oldest ready age, workers
alive) live in :mod:`taskflow.stats`; the API's request metrics in
:mod:`taskflow.api.metrics`. README.md lists every metric.

Why not prometheus-client's metric classes: its exposition builds a sample object per
series and formats it, about 10 microseconds a line on a loaded 2-core machine, so a page
with 1,000 queues' worth of histograms (tens of thousands of lines) took 2 s to render.
These families keep each series' line prefix as a string made once, so a render is a
join (about 50x faster, see benchmarks/bench_observability.py). prometheus-client still
provides the process and platform collectors and the API's own small registry.
"""

from __future__ import annotations

import bisect
import http.server
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import REGISTRY as _CLIENT_REGISTRY
from prometheus_client import disable_created_metrics, generate_latest

# A histogram's ``_created`` sample doubles its series and no dashboard reads it.
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


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = sorted(zip(names, values))
    text = ",".join(f'{n}="{_escape_label(v)}"' for n, v in pairs)
    if extra:
        text = f"{text},{extra}" if text else extra
    return "{" + text + "}" if text else ""


class Registry:
    """The families of one page, rendered in the order they were made."""

    def __init__(self) -> None:
        self.families: list[_Family] = []
        self.collectors: list[Callable[[], str]] = []  # extra text (taskflow.stats)

    def render(self) -> str:
        parts = [f.render() for f in self.families]
        parts += [c() for c in self.collectors]
        return "".join(parts)


REGISTRY = Registry()


def page() -> bytes:
    """This process's metrics page: prometheus-client's process and platform collectors,
    then every taskflow family."""
    return generate_latest(_CLIENT_REGISTRY) + REGISTRY.render().encode()


class _Family:
    kind = ""
    suffix = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: Registry | None = None) -> None:
        self.name = name
        self.labelnames = tuple(labelnames)
        self._capped = tuple(n in CAPPED_LABELS for n in self.labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._admitted: dict[tuple[Any, ...], Any] = {}
        sample = name + self.suffix
        doc = documentation.replace("\\", "\\\\").replace("\n", "\\n")
        self._header = f"# HELP {sample} {doc}\n# TYPE {sample} {self.kind}\n"
        (REGISTRY if registry is None else registry).families.append(self)
        if not self.labelnames:
            self._default = self._new(())

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            values = tuple(named[n] for n in self.labelnames)
        child = self._admitted.get(values)
        if child is not None:  # the hot path: values seen before and under the cap
            return child
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}")
        key = tuple(LABEL_CAP(n, str(v)) if c else str(v)
                    for n, v, c in zip(self.labelnames, values, self._capped))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new(key)
        if key == values:  # admitted as given: cache it (bounded by the cap, like series)
            self._admitted[values] = child
        return child

    def _new(self, key: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def render(self) -> str:
        lines = [self._header]
        for child in list(self._children.values()):
            child.render(lines)
        return "".join(lines)


class _Value:
    __slots__ = ("prefix", "value", "function", "_text", "_shown")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.value = 0.0
        self.function: Callable[[], float] | None = None
        self._text = ""
        self._shown: float | None = None

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def render(self, lines: list[str]) -> None:
        value = self.value if self.function is None else self.function()
        if value != self._shown:  # unchanged since the last scrape: the same line
            self._text = f"{self.prefix} {_number(value)}\n"
            self._shown = value
        lines.append(self._text)


class Counter(_Family):
    """A counter (exported with ``_total``)."""

    kind = "counter"
    suffix = "_total"

    def _new(self, key: tuple[str, ...]) -> _Value:
        self._children[key] = child = _Value(
            self.name + "_total" + _labels(self.labelnames, key))
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._default.value += amount


class Gauge(_Family):
    kind = "gauge"

    def _new(self, key: tuple[str, ...]) -> _Value:
        self._children[key] = child = _Value(self.name + _labels(self.labelnames, key))
        return child

    def set(self, value: float) -> None:
        self._default.set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._default.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self._default.value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        self._default.set_function(function)


_BUCKET_LINE = "{} {}.0\n".format


class _Buckets:
    __slots__ = ("bounds", "counts", "sum", "prefixes", "count_prefix", "sum_prefix",
                 "changes", "_text", "_text_at")

    def __init__(self, name: str, names: Sequence[str], key: Sequence[str],
                 bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        les = [_number(b) for b in bounds] + ["+Inf"]
        self.prefixes = [name + "_bucket" + _labels(names, key, f'le="{le}"') for le in les]
        self.count_prefix = name + "_count" + _labels(names, key)
        self.sum_prefix = name + "_sum" + _labels(names, key)
        self.changes = 0
        self._text = ""
        self._text_at = -1

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.changes += 1

    def render(self, lines: list[str]) -> None:
        # A histogram nobody observed since the last scrape renders as it did then (most
        # of 1,000 queues' series, between two scrapes): one cached string, no formatting.
        changes = self.changes
        if changes != self._text_at:
            counts = list(itertools.accumulate(self.counts))
            self._text = "".join([*map(_BUCKET_LINE, self.prefixes, counts),
                                  f"{self.count_prefix} {counts[-1]}.0\n",
                                  f"{self.sum_prefix} {_number(self.sum)}\n"])
            self._text_at = changes
        lines.append(self._text)


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 registry: Registry | None = None, *, buckets: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in buckets if b != math.inf)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self, key: tuple[str, ...]) -> _Buckets:
        self._children[key] = child = _Buckets(self.name, self.labelnames, key, self.bounds)
        return child

    def observe(self, value: float) -> None:
        self._default.observe(value)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = page()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def serve(host: str, port: int) -> http.server.ThreadingHTTPServer:
    """Serve :func:`page` at ``http://host:port/metrics`` from a daemon thread (the
    worker's and the notifier's own port)."""
    server = http.server.ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="taskflow-metrics",
                     daemon=True).start()
    return server


# Latency buckets: 5 ms to 12 h, so a panel resolves a noop's queue wait and a nightly
# job's run time alike (histogram_quantile interpolates within a bucket).
LATENCY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 900, 3600, 14400, 43200)

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
WORKER_RUNNING = Gauge("taskflow_worker_running_jobs",
                       "Handlers running in this worker (all its processes)")
WORKER_SLOTS = Gauge("taskflow_worker_concurrency_slots",
                     "Handlers this worker may run at once (worker.concurrency)")
WORKER_FREE = Gauge("taskflow_worker_free_slots",
                    "Concurrency slots of this worker not running a handler")
FLUSH_BATCH = Histogram("taskflow_outcome_batch_size", "Outcomes stored per statement",
                        buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
FLUSH_STARTS = Counter(
    "taskflow_worker_flush_starts", "Released dependents a worker started in the outcome "
    "flush that released them, without a claim round")
# -- supervised processes (worker.processes, api.workers; see taskflow.processes) ----------
PROCESSES_UP = Gauge("taskflow_supervised_processes",
                     "Child processes running under this supervisor (0 without one)")
PROCESS_RESTARTS = Counter("taskflow_process_restarts", "Child processes the supervisor "
                           "restarted because they exited unasked")
# -- the API (request latency is in taskflow.api.metrics) -----------------------------------
AUTH_FAILURES = Counter(
    "taskflow_api_auth_failures", "Requests refused by authentication or authorization, by "
    "reason: missing, malformed, algorithm, unknown_key, signature, expired, audience, "
    "issuer, claims, invalid (other), scope (a valid token lacking the scope)", ["reason"])

# -- the notifier ------------------------------------------------------------------------
NOTIFICATIONS = Counter(
    "taskflow_notifications", "Delivery attempts of outbox rows, by channel (dead_letter, "
    "webhook, email) and outcome (delivered, retried, failed)", ["channel", "outcome"])
NOTIFY_DURATION = Histogram(
    "taskflow_notification_batch_seconds", "Time to deliver one channel's share of a batch",
    ["channel"], buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30))
OUTBOX_PENDING = Gauge("taskflow_outbox_backlog", "Outbox rows not yet delivered or failed")
OUTBOX_OLDEST = Gauge(
    "taskflow_outbox_oldest_age_seconds",
    "Age of the oldest outbox row not yet delivered or failed (0 when there is none)")
DEAD_LETTERS_PUBLISHED = Counter(
    "taskflow_dead_letters_published", "Dead letters the DLQ broker confirmed")
