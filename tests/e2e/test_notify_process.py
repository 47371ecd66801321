"""``taskflow notify`` as a process: SIGKILLed mid-batch and restarted (nothing lost,
duplicates only of the rows it held), SIGTERM (hands back, exits 0), its health port, and
``taskflow dev`` delivering webhooks in the same process as the API and the worker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from taskflow.adapters.outbox import OutboxStore
from taskflow.models import NewJob
from taskflow.runtime import Stores, open_stores
from tests.conftest import make_settings
from tests.e2e.api_stack import Client, Isolated
from tests.e2e.processes import Role
from tests.e2e.test_dev_process import Dev, data_dir  # noqa: F401
from tests.helpers import wait_until
from tests.notify_servers import Receiver, count, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
async def iso(servers, tmp_path) -> AsyncIterator[Isolated]:
    db = Isolated(servers, tmp_path)
    await db.create()
    try:
        yield db
    finally:
        await db.drop()


@pytest.fixture
async def stores(iso: Isolated) -> AsyncIterator[Stores]:
    settings = make_settings(iso, redis_prefix=iso.prefix)
    async with open_stores(settings, iso.database_url, iso.redis_url) as s:
        yield s


def notify_env(iso: Isolated, **extra: str) -> dict[str, str]:
    return {"TASKFLOW_REDIS_PREFIX": iso.prefix,
            "TASKFLOW_OUTBOUND__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            "TASKFLOW_NOTIFY__METRICS_PORT": "0",
            "TASKFLOW_NOTIFY__IDLE_WAIT": "0.5",
            "TASKFLOW_NOTIFY__RETRY__BASE_DELAY": "0.1",
            "TASKFLOW_NOTIFY__RETRY__MAX_DELAY": "0.5", **extra}


async def ended_jobs(stores: Stores, n: int) -> list:
    """``n`` jobs that succeeded (ended in PostgreSQL directly: the triggers write their
    outbox rows exactly as a worker's flush would)."""
    jobs = [NewJob(task="noop", max_attempts=1) for _ in range(n)]
    await stores.store.insert_jobs(jobs)
    await stores.store.pool.execute(
        "UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE state = 'queued'")
    return [j.id for j in jobs]


async def outbox_status(outbox: OutboxStore) -> dict[str, int]:
    rows = await outbox.pool.fetch("SELECT status, count(*) FROM outbox GROUP BY status")
    return {r["status"]: r["count"] for r in rows}


async def test_sigkill_mid_batch_then_restart_loses_nothing(iso, stores, receiver, tmp_path):
    outbox = OutboxStore(stores.store.pool)
    sub = await outbox.insert_subscription("default", ["job.succeeded"], None, None,
                                           receiver.url, None)
    receiver.secrets = [sub.secret]
    receiver.delay = 0.05
    ids = await ended_jobs(stores, 150)
    env = notify_env(iso, TASKFLOW_NOTIFY__BATCH_SIZE="20",
                     TASKFLOW_NOTIFY__CONCURRENCY="5", TASKFLOW_NOTIFY__CLAIM_TTL="3",
                     TASKFLOW_NOTIFY__WEBHOOK_TIMEOUT="2")
    first = Role(iso, ["notify"], tmp_path / "notify1.log", **env)
    try:
        # Mid-batch: 50 is two and a half batches of 20, so the third is in its hands (40,
        # a whole number of batches, could catch it between two and find nothing held).
        await wait_until(lambda: _received_at_least(receiver, 50), timeout=30)
        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    finally:
        first.stop()
    before_restart = len(receiver.received)
    held = await outbox.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE status = 'pending' AND claim_token IS NOT NULL")
    assert 0 < held <= 20, held  # one batch was in its hands
    port = free_port()
    second = Role(iso, ["notify"], tmp_path / "notify2.log",
                  **{**env, "TASKFLOW_NOTIFY__METRICS_PORT": str(port)})
    try:
        await wait_until(lambda: _all_delivered(outbox, 150), timeout=60)
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200, path
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        delivered = re.search(
            r'taskflow_notifications_total\{channel="webhook",outcome="delivered"\} (\S+)', text)
        assert delivered and float(delivered.group(1)) >= 150 - before_restart
    finally:
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0, second.output()
    times = count(r["id"] for r in receiver.received)
    bodies = {r["body"]["data"]["id"] for r in receiver.received}
    assert bodies == {str(i) for i in ids}  # every event arrived
    duplicates = [m for m, n in times.items() if n > 1]
    assert all(n <= 2 for n in times.values())
    assert len(duplicates) <= held  # only rows the killed notifier held
    assert receiver.rejected == []
    assert "Traceback" not in second.output(), second.output()[-3000:]


async def _received_at_least(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) >= n


async def _all_delivered(outbox: OutboxStore, n: int) -> bool:
    return await outbox_status(outbox) == {"delivered": n}


async def test_sigterm_hands_back_and_exits_zero(iso, stores, receiver, tmp_path):
    outbox = OutboxStore(stores.store.pool)
    sub = await outbox.insert_subscription("default", ["job.succeeded"], None, None,
                                           receiver.url, None)
    receiver.secrets = [sub.secret]
    receiver.delay = 20  # longer than the grace period
    await ended_jobs(stores, 5)
    role = Role(iso, ["notify"], tmp_path / "notify.log",
                **notify_env(iso, TASKFLOW_NOTIFY__SHUTDOWN_GRACE="0.5"))
    try:
        await wait_until(lambda: outbox.pool.fetchval(
            "SELECT count(*) = 5 FROM outbox WHERE claim_token IS NOT NULL"), timeout=30)
        began = time.monotonic()
        role.signal(signal.SIGTERM)
        assert role.wait(15) == 0, role.output()
        assert time.monotonic() - began < 10
    finally:
        role.stop()
    rows = await outbox.pool.fetch("SELECT status, attempts, claim_token FROM outbox")
    assert [tuple(r) for r in rows] == [("pending", 0, None)] * 5
    assert "handed back 5 undelivered outbox rows" in role.output()


class DevWithEnv(Dev):
    """``taskflow dev`` with extra settings in its environment."""

    def __init__(self, folder: Path, log: Path, **extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        env.update(TASKFLOW_ENV="development", TASKFLOW_DATA_DIR=str(folder / "data"),
                   TASKFLOW_LOG_LEVEL="INFO", **extra)
        self.log_path = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskflow.cli", "dev", "--port", "0"], env=env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)


async def test_dev_delivers_webhooks_in_process(data_dir, tmp_path, receiver):  # noqa: F811
    dev = DevWithEnv(data_dir, tmp_path / "dev.log",
                     TASKFLOW_OUTBOUND__ALLOWED_NETWORKS='["127.0.0.0/8"]',
                     TASKFLOW_NOTIFY__METRICS_PORT=str(free_port()))
    try:
        banner = await dev.banner()
        url = re.search(r"API (http://\S+)", banner).group(1)
        token = re.search(r"^TOKEN=(\S+)$", banner, re.MULTILINE).group(1)
        async with aiohttp.ClientSession() as http:
            client = Client(http, url, token)
            secret = await client.get("/subscriptions/webhook-secret")
            assert secret.status == 200, secret
            receiver.secrets = [secret.body["secret"]]
            reply = await client.post("/tasks", json={
                "task": "echo", "payload": {"x": 1},
                "notify": {"on": ["succeeded"], "webhook": receiver.url}})
            assert reply.status == 201, reply
            await wait_until(lambda: _received_at_least(receiver, 1), timeout=30)
            [got] = receiver.received
            assert got["body"]["type"] == "job.succeeded"
            assert got["body"]["data"]["result"] == {"x": 1}
            # The notifier records the delivery once the receiver's answer is in: after the
            # receiver saw it, so wait for the record too.
            async def delivered() -> bool:
                notes = await client.get(f"/tasks/{reply.body['id']}/notifications")
                return [n["status"] for n in notes.body["items"]] == ["delivered"]

            await wait_until(delivered, timeout=10)
        assert dev.ctrl_c() == 0, dev.output()
    except BaseException:
        dev.kill()
        raise
    assert "notifier delivering webhook (http)" in dev.output()
