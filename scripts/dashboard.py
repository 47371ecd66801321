"""Writes helm/taskflow/dashboards/taskflow.json: python scripts/dashboard.py helm/taskflow/dashboards/taskflow.json

The dashboard is generated so that every panel follows the same rules (datasource variable,
queue and task filters, $__rate_interval); tests/e2e/test_observability.py proves each
panel against a real Prometheus."""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
Q = 'queue=~"$queue"'
QT = 'queue=~"$queue",task=~"$task"'
R = "$__rate_interval"
panels = []
y = 0
pid = 0
def row(title):
    global y, pid
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1
x = 0
def panel(title, desc, targets, unit="short", kind="timeseries", w=8, h=8):
    global x, y, pid
    pid += 1
    if x + w > 24:
        x = 0; y += h
    p = {"type": kind, "title": title, "description": desc, "id": pid, "datasource": DS,
         "gridPos": {"h": h, "w": w, "x": x, "y": y},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {},
         "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l}
                     for i, (e, l) in enumerate(targets)]}
    panels.append(p)
    x += w
def newrow(title):
    global x, y
    if x:
        y += 8; x = 0
    row(title)

newrow("Queues")
panel("Queue size by state", "Jobs per queue: ready (due, waiting for a worker), scheduled (due later), running (leased), blocked (waiting on upstream jobs). max over the processes reporting a queue.",
      [(f'max by (queue, state) (taskflow_queue_jobs{{{Q}}})', "{{queue}} {{state}}")])
panel("Oldest ready job age", "How long the oldest ready job of each queue has been due: the backlog signal for autoscaling and alerts.",
      [(f'max by (queue) (taskflow_queue_oldest_ready_age_seconds{{{Q}}})', "{{queue}}")], unit="s")
panel("Workers alive", "Workers whose presence heartbeat is current, in all and per queue they serve.",
      [('max(taskflow_workers_alive)', "all workers"),
       (f'max by (queue) (taskflow_queue_workers{{{Q}}})', "serving {{queue}}")])
newrow("Throughput")
panel("Submitted and started", "Jobs created (API) and attempts started (workers) per second.",
      [(f'sum by (queue) (rate(taskflow_jobs_submitted_total{{{Q}}}[{R}]))', "submitted {{queue}}"),
       (f'sum by (queue) (rate(taskflow_jobs_started_total{{{QT}}}[{R}]))', "started {{queue}}")], unit="ops")
panel("Finished by outcome", "Attempts ended per second by outcome: succeeded, retried, failed (for good), cancelled.",
      [(f'sum by (outcome) (rate(taskflow_jobs_finished_total{{{QT}}}[{R}]))', "{{outcome}}")], unit="ops")
panel("Retries", "Failed attempts scheduled to run again: per second by task, and how many in the dashboard's time range.",
      [(f'sum by (task) (rate(taskflow_job_retries_total{{{QT}}}[{R}]))', "{{task}} /s"),
       (f'sum(increase(taskflow_job_retries_total{{{QT}}}[$__range]))', "in range")], unit="short")
panel("Failures and dead letters", "Jobs that failed for good (dead letters) per second by queue, and the share of finished jobs that failed.",
      [(f'sum by (queue) (rate(taskflow_dead_letters_total{{{Q}}}[{R}]))', "dead letters {{queue}}"),
       (f'sum(rate(taskflow_jobs_finished_total{{{QT},outcome="failed"}}[{R}])) / sum(rate(taskflow_jobs_finished_total{{{QT},outcome=~"succeeded|failed|cancelled"}}[{R}]))', "failure ratio")])
panel("Lease rescues and repairs", "Attempts rescued after their worker lost its lease (crashes), outcomes fenced off, leases taken back after a Redis loss, jobs the reconciler re-indexed.",
      [(f'sum by (queue) (rate(taskflow_leases_rescued_total{{{Q}}}[{R}]))', "rescued {{queue}}"),
       (f'sum(rate(taskflow_outcomes_fenced_total[{R}]))', "fenced"),
       (f'sum by (queue) (rate(taskflow_leases_retaken_total{{{Q}}}[{R}]))', "retaken {{queue}}"),
       (f'sum(rate(taskflow_jobs_reindexed_total[{R}]))', "re-indexed")], unit="ops")
newrow("Latency")
for name, metric, sel, desc in [
        ("Queue wait", "taskflow_job_queue_wait_seconds", Q, "From an attempt's due time to its start."),
        ("Run time", "taskflow_job_duration_seconds", QT, "Handler run time of an attempt."),
        ("End to end", "taskflow_job_end_to_end_seconds", Q, "From a job's creation to the end of its last attempt.")]:
    panel(f"{name} percentiles", desc + " p50, p95, p99.",
          [(f'histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{sel}}}[{R}])))', f"p{int(q*100)}")
           for q in (0.5, 0.95, 0.99)], unit="s")
newrow("Workers")
panel("Worker saturation", "Handlers running over concurrency slots, all workers.",
      [('sum(taskflow_worker_running_jobs) / sum(taskflow_worker_concurrency_slots > 0)', "busy share")], unit="percentunit")
panel("Handlers running and free slots", "Handlers running and concurrency slots free per worker instance.",
      [('sum by (instance) (taskflow_worker_running_jobs)', "running {{instance}}"),
       ('sum by (instance) (taskflow_worker_free_slots)', "free {{instance}}")])
panel("Outcome batch size", "Outcomes stored per statement (group commit), p50 and p95.",
      [(f'histogram_quantile(0.5, sum by (le) (rate(taskflow_outcome_batch_size_bucket[{R}])))', "p50"),
       (f'histogram_quantile(0.95, sum by (le) (rate(taskflow_outcome_batch_size_bucket[{R}])))', "p95")])
newrow("API")
panel("Request rate by route and status class", "Requests per second by route template and status class.",
      [(f'sum by (route, status) (rate(taskflow_api_request_duration_seconds_count[{R}]))', "{{route}} {{status}}")], unit="reqps")
panel("Request latency p95 by route", "95th percentile request latency by route template.",
      [(f'histogram_quantile(0.95, sum by (le, route) (rate(taskflow_api_request_duration_seconds_bucket[{R}])))', "{{route}}")], unit="s")
panel("Errors and auth failures", "Client (4xx) and server (5xx) errors per second, the 5xx share, and requests refused by authentication or authorization by reason.",
      [(f'sum by (status) (rate(taskflow_api_request_duration_seconds_count{{status=~"4xx|5xx"}}[{R}]))', "{{status}}"),
       (f'sum(rate(taskflow_api_request_duration_seconds_count{{status="5xx"}}[{R}])) / sum(rate(taskflow_api_request_duration_seconds_count[{R}]))', "5xx share"),
       (f'sum by (reason) (rate(taskflow_api_auth_failures_total[{R}]))', "auth: {{reason}}")], unit="reqps")
newrow("Notifier (taskflow notify)")
NOTE = " Needs the notifier role (taskflow notify)."
panel("Outbox backlog", "Notifications and dead-letter publications waiting in the outbox, and the age of the oldest." + NOTE,
      [('max(taskflow_outbox_backlog)', "waiting"),
       ('max(taskflow_outbox_oldest_age_seconds)', "oldest age (s)")])
panel("Deliveries by channel and outcome", "Notification deliveries per second by channel and outcome." + NOTE,
      [(f'sum by (channel, outcome) (rate(taskflow_notifications_total[{R}]))', "{{channel}} {{outcome}}")], unit="ops")
panel("Dead-letter publications", "Dead letters published to the broker per second." + NOTE,
      [(f'sum(rate(taskflow_dead_letters_published_total[{R}]))', "published")], unit="ops")

def var(name, label, metric, lab):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": f"label_values({metric}, {lab})", "refId": "StandardVariableQuery"},
            "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "sort": 1, "hide": 0}

dash = {
    "title": "taskflow",
    "uid": "taskflow-overview",
    "description": "taskflow job scheduler: queues, throughput, latency, workers, API, notifier.",
    "tags": ["taskflow"],
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-3h", "to": "now"},
    "timepicker": {},
    "timezone": "browser",
    "fiscalYearStartMonth": 0,
    "liveNow": False,
    "links": [],
    "annotations": {"list": []},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {"text": "default", "value": "default"}, "hide": 0, "refresh": 1, "regex": "", "options": [], "multi": False, "includeAll": False},
        var("queue", "Queue", "taskflow_queue_jobs", "queue"),
        var("task", "Task", "taskflow_jobs_started_total", "task"),
    ]},
    "panels": panels,
}
import sys
json.dump(dash, open(sys.argv[1], "w"), indent=2)
open(sys.argv[1], "a").write("\n")
