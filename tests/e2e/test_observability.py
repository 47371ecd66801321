"""The proof of issue 8: a real Prometheus scrapes ``taskflow serve``, ``taskflow work``
and ``taskflow notify`` (dead letters to a real Kafka-protocol broker, webhooks to a
local receiver) under a mixed workload (successes, retries, failures, delayed and blocked jobs, a
backlog on a queue no worker serves, refused tokens), then every dashboard panel and
every alert rule is asked of it: each expression parses, each panel returns data, each
rule evaluates without error. Also: ``promtool check metrics`` finds nothing to say about
either page, and the worker's JSON log lines carry the job's context."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from taskflow.adapters.embedded import free_port
from taskflow.api.scopes import READ, SUBSCRIPTIONS, WRITE
from tests.e2e.api_stack import AUDIENCE, ISSUER, SECRET, Client, Isolated, start_api, stop, token
from tests.e2e.processes import Role
from tests.helpers import wait_until
from tests.notify_servers import KafkaBroker, Receiver, read_topic
from tests.observability import (
    Prometheus, panels, promtool, rules, substitute,
)

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or promtool() is None,
    reason="Debian's prometheus package is not installed (apt-get install -y prometheus; "
           ".ci/run installs it)")


class Observed:
    def __init__(self, api_url: str, worker_metrics: str, notifier_metrics: str,
                 worker: Role, prom: str, iso: Isolated, env: dict[str, str]) -> None:
        self.iso = iso
        self.env = env
        self.api_url = api_url
        self.worker_metrics = worker_metrics
        self.notifier_metrics = notifier_metrics
        self.worker = worker
        self.prom = prom


# What the workload's jobs on the default queue end as (see _workload): 20 noop, 5 sleep,
# 5 that succeed on their second attempt and 5 delayed noop succeed; 3 fail for good.
SUCCEEDED = 35


async def _workload(client: Client, receiver: Receiver) -> list[str]:
    """Successes (each notified by webhook), retries that succeed, failures for good (dead
    letters), delayed jobs, jobs blocked on a far-future upstream, a backlog no worker
    serves, and refused requests."""
    subscribed = await client.with_token(token("tenant-a", [READ, WRITE, SUBSCRIPTIONS])).post(
        "/subscriptions", json={"events": ["job.succeeded"], "queue": "default",
                                "webhook": receiver.url})
    assert subscribed.status == 201, subscribed
    receiver.secrets.append(subscribed.body["secret"])
    jobs = [{"task": "noop"} for _ in range(20)]
    jobs += [{"task": "sleep", "payload": {"seconds": 0.05}} for _ in range(5)]
    jobs += [{"task": "fail", "payload": {"times": 1}, "max_attempts": 3,
              "backoff": {"base_delay": 0.2, "jitter": 0}} for _ in range(5)]
    jobs += [{"task": "fail", "max_attempts": 2, "backoff": {"base_delay": 0.2}}
             for _ in range(3)]
    jobs += [{"task": "noop", "delay": 1.0} for _ in range(5)]
    reply = await client.post("/tasks/batch", json={"tasks": jobs})
    assert reply.status == 201, reply
    ids = reply.body["ids"]
    far = await client.post("/tasks", json={"task": "noop", "delay": 3600})
    assert far.status == 201, far
    for _ in range(3):
        blocked = await client.post("/tasks", json={"task": "noop",
                                                    "depends_on": [far.body["id"]]})
        assert blocked.status == 201, blocked
    backlog = await client.post("/tasks/batch", json={"tasks": [
        {"task": "noop", "queue": "backlog", "priority": p} for p in (0, 5, 5, 10) * 5]})
    assert backlog.status == 201, backlog
    for bearer in (None, "not-a-jwt", token("t", key="y" * 40)):
        assert (await client.with_token(bearer).get("/tasks")).status == 401
    for job_id in ids:
        await client.wait_state(job_id, {"succeeded", "failed"}, timeout=30)
    return ids


@pytest.fixture(scope="module")
async def observed(servers, tmp_path_factory) -> AsyncIterator[Observed]:
    folder = tmp_path_factory.mktemp("observability")
    iso = Isolated(servers, folder)
    await iso.create()
    env = {
        "TASKFLOW_JWT_SECRET": SECRET, "TASKFLOW_AUTH__ISSUER": ISSUER,
        "TASKFLOW_AUTH__AUDIENCE": AUDIENCE, "TASKFLOW_REDIS_PREFIX": iso.prefix,
        "TASKFLOW_QUEUES": '["default", "backlog"]',
        "TASKFLOW_METRICS__STATS_INTERVAL": "0.5",
    }
    port, notify_port = free_port(), free_port()
    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="taskflow-kafka-")), folder / "kafka.log")
    receiver = Receiver()
    await receiver.start()
    broker.start()
    api, url = await start_api(iso, folder / "api.log", **env,
                               TASKFLOW_OUTBOUND__ALLOWED_NETWORKS='["127.0.0.0/8"]')
    worker = Role(iso, ["work", "-q", "default", "--concurrency", "8"], folder / "worker.log",
                  TASKFLOW_WORKER__METRICS_PORT=str(port), TASKFLOW_LOG__FORMAT="json",
                  **env)
    notifier = Role(iso, ["notify"], folder / "notifier.log", **env,
                    TASKFLOW_NOTIFY__METRICS_PORT=str(notify_port),
                    TASKFLOW_OUTBOUND__ALLOWED_NETWORKS='["127.0.0.0/8"]',
                    TASKFLOW_DLQ__BACKEND="kafka",
                    TASKFLOW_DLQ__KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap)
    worker_metrics = f"http://127.0.0.1:{port}/metrics"
    notifier_metrics = f"http://127.0.0.1:{notify_port}/metrics"
    # Without Prometheus (a machine without Debian's package) the tests that need it
    # skip, and the others still run against the roles.
    prometheus = Prometheus(PROMETHEUS, {"taskflow-api": url + "/metrics",
                                         "taskflow-worker": worker_metrics,
                                         "taskflow-notifier": notifier_metrics}
                            ) if PROMETHEUS else None
    try:
        with prometheus.running() if prometheus else contextlib.nullcontext("") as prom:
            async with aiohttp.ClientSession() as http:
                await _wait_ok(http, worker_metrics, "the worker's metrics page")
                # Ready = registered as the dead letters' consumer, so the failures below
                # are written to the outbox.
                await _wait_ok(http, f"http://127.0.0.1:{notify_port}/readyz",
                               "the notifier's readiness")
                # Scraped before the workload too, so its counters have a rate.
                await _wait_scraped(http, prom, after=time.time())
                await _workload(Client(http, url, token("tenant-a")), receiver)
                # Every success notified, every failure for good on the topic.
                async def all_notified() -> bool:
                    return len(receiver.ids_delivered()) >= SUCCEEDED

                await wait_until(all_notified, timeout=30)
                await read_topic(broker.bootstrap, "taskflow.dead-letters", 3)
                # Every target scraped after the workload, and the rules evaluated on it.
                await _wait_scraped(http, prom, after=time.time() + 6)
            yield Observed(url, worker_metrics, notifier_metrics, worker, prom, iso, env)
    finally:
        stop(api, worker, notifier)
        broker.stop()
        shutil.rmtree(broker.data_dir, ignore_errors=True)
        await receiver.close()
        await iso.drop()


async def _wait_ok(http: aiohttp.ClientSession, page: str, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            async with http.get(page) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"{what} never answered 200"
        await asyncio.sleep(0.1)


async def _wait_scraped(http: aiohttp.ClientSession, prom: str, after: float) -> None:
    if not prom:
        return  # no Prometheus here
    deadline = time.monotonic() + 20
    while True:
        await asyncio.sleep(0.5)
        try:
            async with http.get(prom + "/api/v1/targets") as resp:
                targets = (await resp.json())["data"]["activeTargets"]
        except aiohttp.ClientError:
            targets = []
        if len(targets) == 3 and all(
                t["health"] == "up" and _epoch(t["lastScrape"]) > after for t in targets):
            return
        assert time.monotonic() < deadline, f"Prometheus did not scrape every role: {targets}"


def _epoch(rfc3339: str) -> float:
    """Prometheus's times ("2026-11-30T15:00:42.838123456Z") as Unix seconds."""
    from datetime import datetime

    whole, _, rest = rfc3339.rstrip("Z").partition(".")
    fraction = float("0." + rest) if rest else 0.0
    return datetime.fromisoformat(whole + "+00:00").timestamp() + fraction


async def _query(http: aiohttp.ClientSession, prom: str, expr: str) -> list[dict]:
    async with http.get(prom + "/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert body["status"] == "success", f"{expr!r}: {body.get('error')}"
    return body["data"]["result"]


def _finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


@needs_prometheus
async def test_every_dashboard_panel_returns_data(observed: Observed):
    async with aiohttp.ClientSession() as http:
        for panel in panels():
            exprs = [t["expr"] for t in panel["targets"]]
            results = [await _query(http, observed.prom, substitute(e)) for e in exprs]
            assert any(_finite(r) for r in results), (
                f"panel {panel['title']!r} has no data: {exprs}")
        # Gauges every notifier exports from its start, each behind a panel target
        # (and the oldest-age one behind an alert) beside another that has data.
        for gauge in ("taskflow_outbox_backlog", "taskflow_outbox_oldest_age_seconds"):
            assert _finite(await _query(http, observed.prom, gauge)), f"no {gauge}"
        delivered = await _query(http, observed.prom, 'sum by (channel) ('
                                 'taskflow_notifications_total{outcome="delivered"})')
        assert {r["metric"]["channel"]: float(r["value"][1]) for r in delivered} == {
            "webhook": SUCCEEDED, "dead_letter": 3.0}
        published = await _query(http, observed.prom,
                                 "sum(taskflow_dead_letters_published_total)")
        assert float(published[0]["value"][1]) == 3.0


@needs_prometheus
async def test_every_alert_rule_evaluates_and_the_backlog_ones_see_the_workload(
        observed: Observed):
    async with aiohttp.ClientSession() as http:
        for rule in rules():
            await _query(http, observed.prom, rule["expr"])  # parses
        async with http.get(observed.prom + "/api/v1/rules") as resp:
            loaded = [r for g in (await resp.json())["data"]["groups"] for r in g["rules"]]
        assert {r["name"] for r in loaded} == {r["alert"] for r in rules()}
        assert all(r["health"] == "ok" and not r.get("lastError") for r in loaded), loaded
        # The queue nobody serves is the one the no-workers rule selects (it fires after
        # its `for`), and the failures just made count as dead letters.
        by_name = {r["alert"]: r["expr"] for r in rules()}
        no_workers = await _query(http, observed.prom, by_name["TaskflowNoWorkers"])
        assert [r["metric"]["queue"] for r in no_workers] == ["backlog"]
        dead = await _query(http, observed.prom, by_name["TaskflowDeadLetters"])
        assert [r["metric"]["queue"] for r in dead] == ["default"]
        sizes = {(r["metric"]["queue"], r["metric"]["state"]): float(r["value"][1])
                 for r in await _query(http, observed.prom,
                                       "max by (queue, state) (taskflow_queue_jobs)")}
        assert sizes[("backlog", "ready")] == 20
        assert sizes[("default", "blocked")] == 3
        assert sizes[("default", "scheduled")] == 1
        age = await _query(http, observed.prom,
                           'max(taskflow_queue_oldest_ready_age_seconds{queue="backlog"})')
        assert float(age[0]["value"][1]) > 0.5
        reasons = await _query(http, observed.prom,
                               "sum by (reason) (taskflow_api_auth_failures_total)")
        assert {r["metric"]["reason"] for r in reasons} == {"missing", "malformed",
                                                            "signature"}
        alive = await _query(http, observed.prom, "max(taskflow_workers_alive)")
        assert float(alive[0]["value"][1]) == 1


async def test_with_metrics_token_set_the_api_page_needs_it(observed: Observed, tmp_path):
    api, url = await start_api(observed.iso, tmp_path / "api.log", **observed.env,
                               TASKFLOW_METRICS__TOKEN="scrape-" + "z" * 24)
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/actuator/prometheus"):
                for header in (None, "Bearer wrong", f"Bearer {token('tenant-a')}"):
                    async with http.get(url + path, headers={"Authorization": header}
                                        if header else {}) as resp:
                        assert resp.status == 401, (path, header)
                        assert "taskflow_" not in await resp.text()
                async with http.get(url + path, headers={
                        "Authorization": "Bearer scrape-" + "z" * 24}) as resp:
                    assert resp.status == 200 and "taskflow_jobs_submitted_total" in \
                        await resp.text()
    finally:
        stop(api)


@needs_prometheus
async def test_promtool_finds_nothing_to_say_about_either_page(observed: Observed):
    async with aiohttp.ClientSession() as http:
        for page in (observed.api_url + "/metrics", observed.api_url + "/actuator/prometheus",
                     observed.worker_metrics, observed.notifier_metrics):
            async with http.get(page) as resp:
                text = await resp.read()
            assert b"_created" not in text
            lint = subprocess.run([promtool(), "check", "metrics"], input=text,
                                  capture_output=True, timeout=30)
            assert lint.stdout + lint.stderr == b"", (page, lint.stdout + lint.stderr)


async def test_worker_logs_are_json_lines_with_the_job_context(observed: Observed):
    lines = [json.loads(line) for line in observed.worker.output().splitlines()
             if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    retried = [r for r in lines if "retrying" in r["message"]]
    failed = [r for r in lines if "failed for good" in r["message"]]
    assert retried and all(r["level"] == "info" for r in retried)
    assert len(failed) == 3 and all(r["level"] == "warning" for r in failed)
    for record in retried + failed:
        assert {"job_id", "task", "queue", "attempt", "worker", "tenant"} <= set(record)
        assert record["task"] == "fail" and record["tenant"] == "tenant-a"

