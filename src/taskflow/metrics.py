"""Prometheus metrics of every role, in one place so names and labels stay consistent."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
