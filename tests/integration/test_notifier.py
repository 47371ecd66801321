"""The notifier against real servers over loopback: a Kafka-protocol broker, an SMTP
server and a webhook receiver that verifies signatures with ``standardwebhooks``. Each
fault test asserts that nothing is lost and nothing is delivered twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from taskflow.adapters.outbox import OutboxStore
from taskflow.config import Settings
from taskflow.jobs import submit
from taskflow.models import JobNotify, NewJob
from taskflow.notifier.role import run_notifier
from tests.conftest import make_settings
from tests.helpers import running_worker, submit_jobs, wait_for_states, wait_until
from tests.integration.outbox_helpers import outbox_rows
from tests.notify_servers import (
    KafkaBroker, SmtpServer, count, free_port, header, read_topic,
)

DONE = {"succeeded", "failed", "cancelled"}
FAIL = {"task": "fail", "payload": {"message": "boom"}, "max_attempts": 1}


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[KafkaBroker]:
    folder = tmp_path_factory.mktemp("kafka")
    kafka = KafkaBroker(folder / "data", folder / "broker.log")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def notify_settings(servers, **notify) -> Settings:
    dlq = notify.pop("dlq", {"backend": "none"})
    outbound = notify.pop("outbound", {"allowed_networks": ["127.0.0.0/8"]})
    base = {"retry": {"base_delay": 0.05, "factor": 2.0, "max_delay": 0.3, "jitter": 0.0},
            "idle_wait": 0.5, "claim_ttl": 10.0, "webhook_timeout": 3.0, "metrics_port": 0,
            "shutdown_grace": 1.0}
    return make_settings(servers, notify={**base, **notify}, dlq=dlq, outbound=outbound)


def kafka_settings(servers, broker: KafkaBroker, **notify) -> tuple[Settings, str]:
    topic = f"dlq-{uuid.uuid4().hex[:8]}"
    return notify_settings(servers, dlq={"backend": "kafka", "kafka": {
        "bootstrap_servers": broker.bootstrap, "topic": topic, "request_timeout": 2.0,
        "partitions": 1}}, **notify), topic


@contextlib.asynccontextmanager
async def running_notifier(settings: Settings, outbox: OutboxStore, servers,
                           health_port: int = 0) -> AsyncIterator[asyncio.Task]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(settings, outbox, servers.database_url, stop,
                                            health_port=health_port))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def statuses(outbox: OutboxStore) -> dict[str, int]:
    return count(r["status"] for r in await outbox_rows(outbox))


async def all_delivered(outbox: OutboxStore, n: int, timeout: float = 30) -> None:
    await wait_until(lambda: _are_delivered(outbox, n), timeout)


async def _are_delivered(outbox: OutboxStore, n: int) -> bool:
    return await statuses(outbox) == {"delivered": n}


async def test_dead_letters_are_published_to_kafka(stores, servers, outbox, broker):
    settings, topic = kafka_settings(servers, broker)
    async with running_notifier(settings, outbox, servers):
        await wait_until(lambda: outbox.pool.fetchval("SELECT count(*) FROM outbox_sinks"))
        failed = await submit_jobs(stores, *[{**FAIL, "queue": "default",
                                              "labels": {"n": str(i)}} for i in range(5)])
        ok = await submit_jobs(stores, {"task": "noop"}, {"task": "noop"})
        async with running_worker(stores, settings):
            await wait_for_states(stores, failed + ok, DONE)
        await all_delivered(outbox, 5)
    records = await read_topic(broker.bootstrap, topic, 5)
    assert sorted(r.key.decode() for r in records) == sorted(str(i) for i in failed)
    assert all(dict(r.headers)["event"] == b"job.failed" for r in records)
    letter = json.loads(records[0].value)
    for field in ("id", "tenant", "task", "queue", "payload", "labels", "attempts",
                  "max_attempts", "error", "worker", "started_at", "created_at",
                  "finished_at", "workflow_id", "node"):
        assert field in letter, field
    assert "boom" in letter["error"] and letter["attempts"] == 1


async def test_broker_down_then_up_loses_nothing(stores, servers, outbox, broker):
    settings, topic = kafka_settings(servers, broker)
    await outbox.register_sink("dead_letters", "kafka")
    broker.stop()
    try:
        async with running_notifier(settings, outbox, servers):
            failed = await submit_jobs(stores, *[FAIL] * 20)
            async with running_worker(stores, settings):
                await wait_for_states(stores, failed, DONE)

            async def retried() -> bool:
                rows = await outbox_rows(outbox)
                return len(rows) == 20 and all(r["attempts"] >= 2 and r["status"] == "pending"
                                               for r in rows)

            await wait_until(retried, 30)
            broker.start()
            await all_delivered(outbox, 20, timeout=60)
    finally:
        if broker.process is None:
            broker.start()
    records = await read_topic(broker.bootstrap, topic, 20)
    assert count(r.key.decode() for r in records) == {str(i): 1 for i in failed}


async def test_a_broker_lost_under_a_started_producer_neither_hangs_nor_duplicates(
        stores, servers, outbox, broker):
    # The broker goes away after the producer started: aiokafka's send waits for it
    # without end, and so did the notifier's delivery (holding its claim) and its
    # shutdown (the producer's stop flushes), which then published the rows it had
    # handed back, which the next notifier published too.
    settings, topic = kafka_settings(servers, broker, shutdown_grace=0.5)
    try:
        async with running_notifier(settings, outbox, servers) as notifier:
            await wait_until(lambda: outbox.pool.fetchval("SELECT count(*) FROM outbox_sinks"))
            first = await submit_jobs(stores, FAIL)
            async with running_worker(stores, settings):
                await wait_for_states(stores, first, DONE)
                await all_delivered(outbox, 1)
                broker.stop()
                later = await submit_jobs(stores, *[FAIL] * 3)
                await wait_for_states(stores, later, DONE)

            async def retried() -> bool:  # each attempt ends within its timeout
                rows = await outbox_rows(outbox)
                return len(rows) == 4 and all(r["attempts"] >= 2 for r in rows[1:])

            await wait_until(retried, 30)
            began = asyncio.get_running_loop().time()
        # Stopped within the grace and the bounded stop of the producer.
        assert notifier.done() and asyncio.get_running_loop().time() - began < 8
        broker.start()
        async with running_notifier(settings, outbox, servers):
            await all_delivered(outbox, 4, timeout=60)
    finally:
        if broker.process is None:
            broker.start()
    # The first record, acknowledged before the broker was killed, need not have outlived
    # it (a broker of one, killed: Kafka's durability is its replicas); the others went
    # to the broker that came back, each once.
    records = await read_topic(broker.bootstrap, topic, 3)
    keys = count(r.key.decode() for r in records)
    assert {k: n for k, n in keys.items() if k != str(first[0])} == {
        str(i): 1 for i in later}
    assert keys.get(str(first[0]), 1) == 1


async def test_receiver_500_500_200_is_one_webhook_id_three_attempts(
        stores, servers, outbox, receiver):
    settings = notify_settings(servers)
    sub = await outbox.insert_subscription("default", ["job.failed"], None, None,
                                           receiver.url, None)
    receiver.secrets = [sub.secret]
    receiver.script = [500, 500]
    async with running_notifier(settings, outbox, servers):
        [job_id] = await submit_jobs(stores, FAIL)
        async with running_worker(stores, settings):
            await wait_for_states(stores, [job_id], DONE)
        await all_delivered(outbox, 1)
    assert [r["status"] for r in receiver.received] == [500, 500, 200]
    assert len({r["id"] for r in receiver.received}) == 1
    assert receiver.rejected == []
    body = receiver.received[-1]["body"]
    assert body["type"] == "job.failed" and body["data"]["id"] == str(job_id)
    assert body["timestamp"]
    [row] = await outbox_rows(outbox)
    assert row["attempts"] == 3
    attempts = await outbox.pool.fetch(
        "SELECT attempt, outcome, error FROM outbox_attempts ORDER BY id")
    assert [(a["attempt"], a["outcome"], a["error"]) for a in attempts] == [
        (1, "retried", "HTTP 500"), (2, "retried", "HTTP 500"), (3, "delivered", None)]


async def test_per_job_webhook_is_signed_with_the_tenant_secret(
        stores, servers, outbox, receiver):
    settings = notify_settings(servers)
    receiver.secrets = [await outbox.webhook_secret("default")]
    async with running_notifier(settings, outbox, servers):
        result = await submit(stores.store, stores.dispatch, [NewJob(
            task="noop", max_attempts=1,
            notify=JobNotify(on=("succeeded",), webhook=receiver.url))])
        async with running_worker(stores, settings):
            await wait_for_states(stores, [result.created[0].id], DONE)
        await all_delivered(outbox, 1)
    assert [r["body"]["type"] for r in receiver.received] == ["job.succeeded"]
    assert receiver.rejected == []


async def test_client_error_fails_at_once_and_private_targets_are_refused(
        stores, servers, outbox, receiver):
    receiver.secrets = [await outbox.webhook_secret("default")]
    receiver.script = [404]
    guarded = notify_settings(servers, max_attempts=5)
    jobs = [NewJob(task="noop", max_attempts=1,
                   notify=JobNotify(on=("succeeded",), webhook=receiver.url))]
    async with running_notifier(guarded, outbox, servers):
        result = await submit(stores.store, stores.dispatch, jobs)
        async with running_worker(stores, guarded):
            await wait_for_states(stores, [result.created[0].id], DONE)
        await wait_until(lambda: _status_is(outbox, "failed"))
    [row] = await outbox_rows(outbox)
    assert row["attempts"] == 1 and len(receiver.received) == 1
    strict = notify_settings(servers, outbound={"allowed_networks": []})
    await outbox.pool.execute("TRUNCATE outbox")
    async with running_notifier(strict, outbox, servers):
        result = await submit(stores.store, stores.dispatch, [
            NewJob(task="noop", max_attempts=1,
                   notify=JobNotify(on=("succeeded",), webhook=receiver.url))])
        async with running_worker(stores, strict):
            await wait_for_states(stores, [result.created[0].id], DONE)
        await wait_until(lambda: _status_is(outbox, "failed"))
    error = await outbox.pool.fetchval("SELECT last_error FROM outbox")
    assert "may not reach" in error and len(receiver.received) == 1


async def _status_is(outbox: OutboxStore, status: str) -> bool:
    rows = await outbox_rows(outbox)
    return bool(rows) and all(r["status"] == status for r in rows)


async def test_smtp_down_then_up_sends_one_message_to_all_recipients(
        stores, servers, outbox, smtp):
    settings = notify_settings(servers, smtp={"host": "127.0.0.1", "port": smtp.port,
                                              "from": "taskflow@example.com"},
                               api_url="https://taskflow.example")
    smtp.stop()
    try:
        async with running_notifier(settings, outbox, servers):
            result = await submit(stores.store, stores.dispatch, [NewJob(
                task="fail", max_attempts=1, payload={"message": "disk full"},
                notify=JobNotify(email=("ops@example.com", "dev@example.com")))])
            job_id = result.created[0].id
            async with running_worker(stores, settings):
                await wait_for_states(stores, [job_id], DONE)

            async def retried() -> bool:
                rows = await outbox_rows(outbox)
                return len(rows) == 1 and rows[0]["attempts"] >= 2

            await wait_until(retried)
            smtp.start()
            await all_delivered(outbox, 1)
    finally:
        smtp.stop()
    [message] = smtp.messages()
    assert sorted(message.rcpt_tos) == ["dev@example.com", "ops@example.com"]
    text = message.content.decode()
    assert f"Job {job_id} ended failed" in text and "disk full" in text
    assert f"https://taskflow.example/tasks/{job_id}" in text
    assert str(job_id) in header(message, "Subject")


async def test_two_notifiers_share_one_outbox(stores, servers, outbox, receiver):
    settings = notify_settings(servers, batch_size=7)
    sub = await outbox.insert_subscription("default", ["job.succeeded"], None, None,
                                           receiver.url, None)
    receiver.secrets = [sub.secret]
    ids = await submit_jobs(stores, *[{"task": "noop"}] * 300)
    async with running_worker(stores, settings):
        await wait_for_states(stores, ids, DONE)
    async with running_notifier(settings, outbox, servers), \
            running_notifier(settings, outbox, servers):
        await all_delivered(outbox, 300)
    assert len(receiver.received) == 300
    assert len(set(receiver.ids_delivered())) == 300
    assert sorted(r["body"]["data"]["id"] for r in receiver.received) == sorted(
        str(i) for i in ids)


async def test_shutdown_hands_back_what_it_could_not_finish(stores, servers, outbox):
    async def slow(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await asyncio.sleep(30)
        return aiohttp.web.Response()

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    app = web.Application()
    app.router.add_post("/hook", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        settings = notify_settings(servers, shutdown_grace=0.2, webhook_timeout=9.0)
        await outbox.insert_subscription("default", ["job.succeeded"], None, None,
                                         str(server.make_url("/hook")), None)
        ids = await submit_jobs(stores, *[{"task": "noop"}] * 3)
        async with running_worker(stores, settings):
            await wait_for_states(stores, ids, DONE)
        async with running_notifier(settings, outbox, servers):
            await wait_until(lambda: outbox.pool.fetchval(
                "SELECT count(*) = 3 FROM outbox WHERE claim_token IS NOT NULL"))
    finally:
        await server.close()
    rows = await outbox.pool.fetch(
        "SELECT status, attempts, claim_token, next_attempt_at <= now() AS due FROM outbox")
    assert [tuple(r) for r in rows] == [("pending", 0, None, True)] * 3
    outcomes = await outbox.pool.fetch("SELECT outcome FROM outbox_attempts")
    assert [r["outcome"] for r in outcomes] == ["handed_back"] * 3


async def test_health_and_metrics_port(stores, servers, outbox, receiver):
    settings = notify_settings(servers)
    port = free_port()
    async with running_notifier(settings, outbox, servers, health_port=port), \
            aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                async with http.get(base + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientConnectionError:
                return False  # not listening yet

        await wait_until(ready)
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
        assert "taskflow_outbox_backlog" in text and "taskflow_notifications" in text


def _rabbitmq_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _rabbitmq_reachable(),
                    reason="no RabbitMQ on 127.0.0.1:5672 (the RabbitMQ DLQ test needs one)")
async def test_dead_letters_are_published_to_rabbitmq(stores, servers, outbox):
    import aio_pika

    queue = f"taskflow-test-{uuid.uuid4().hex[:8]}"
    url = "amqp://guest:guest@127.0.0.1:5672/"
    settings = notify_settings(servers, dlq={"backend": "rabbitmq",
                                             "rabbitmq": {"url": url, "queue": queue}})
    connection = await aio_pika.connect(url)
    try:
        async with running_notifier(settings, outbox, servers):
            await wait_until(lambda: outbox.pool.fetchval("SELECT count(*) FROM outbox_sinks"))
            failed = await submit_jobs(stores, *[FAIL] * 4)
            async with running_worker(stores, settings):
                await wait_for_states(stores, failed, DONE)
            await all_delivered(outbox, 4)
        channel = await connection.channel()
        q = await channel.declare_queue(queue, durable=True)
        got = []
        while (message := await q.get(fail=False)) is not None:
            await message.ack()
            got.append(message)
        assert sorted(m.message_id for m in got) == sorted(str(i) for i in failed)
        assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in got)
        assert all(m.headers["event"] == "job.failed" for m in got)
        await q.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()


class _BrokenSink:
    """A sink with a bug: the notifier must retry its rows, not lose them or die."""

    channel = "webhook"
    backend = "broken"

    def __init__(self) -> None:
        self.calls = 0

    async def deliver(self, items, done):
        self.calls += 1
        raise KeyError("a bug")

    async def close(self) -> None:
        pass


async def test_a_failing_sink_retries_its_rows_and_the_notifier_goes_on(
        stores, servers, outbox):
    from taskflow.notifier.notifier import Notifier

    settings = notify_settings(servers, max_attempts=3)
    await outbox.register_sink("dead_letters", "kafka")  # a stale registration
    await outbox.insert_subscription("default", ["job.succeeded"], None, None,
                                     "https://hooks.example/x", None)
    ids = await submit_jobs(stores, {"task": "noop"}, {"task": "noop"})
    async with running_worker(stores, settings):
        await wait_for_states(stores, ids, DONE)
    sink = _BrokenSink()
    notifier = Notifier(settings.notify, outbox, servers.database_url, [sink])
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    try:
        await wait_until(lambda: _status_is(outbox, "failed"))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    rows = await outbox.pool.fetch("SELECT attempts, last_error FROM outbox")
    assert [(r["attempts"], r["last_error"]) for r in rows] == [
        (3, "internal error: KeyError('a bug')")] * 2
    assert sink.calls >= 3
    # Started without a DLQ backend, it withdrew the dead-letter registration.
    assert await outbox.pool.fetchval("SELECT count(*) FROM outbox_sinks") == 0


async def test_a_slow_delivery_keeps_its_claim(stores, servers, outbox, receiver):
    """Deliveries outlast claim_ttl several times over; the claim is extended, so the
    second notifier never takes the rows over and each is delivered once."""
    settings = notify_settings(servers, claim_ttl=0.6, webhook_timeout=5.0)
    sub = await outbox.insert_subscription("default", ["job.succeeded"], None, None,
                                           receiver.url, None)
    receiver.secrets = [sub.secret]
    receiver.delay = 2.0
    ids = await submit_jobs(stores, *[{"task": "noop"}] * 3)
    async with running_worker(stores, settings):
        await wait_for_states(stores, ids, DONE)
    async with running_notifier(settings, outbox, servers), \
            running_notifier(settings, outbox, servers):
        await all_delivered(outbox, 3)
    assert len(receiver.received) == 3 and len(set(receiver.ids_delivered())) == 3
    rows = await outbox_rows(outbox)
    assert [r["attempts"] for r in rows] == [1, 1, 1]



@contextlib.asynccontextmanager
async def _ok_and_slow_hooks(stores, settings, on_ok=None) -> AsyncIterator[tuple]:
    """Two jobs that ended, notifying a receiver's ``/ok`` (answered at once, after
    ``on_ok``) and ``/slow`` (answered after 30 s): yields (ok job, slow job, calls)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    calls = {"ok": 0, "slow": 0}

    async def hook(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        calls[name] += 1
        if name == "slow":
            await asyncio.sleep(30)
        elif on_ok is not None:
            await on_ok()
        return web.Response()

    app = web.Application()
    app.router.add_post("/{name}", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        ok, slow = (await submit(stores.store, stores.dispatch, [
            NewJob(task="noop", max_attempts=1, notify=JobNotify(
                on=("succeeded",), webhook=str(server.make_url(f"/{name}"))))
            for name in ("ok", "slow")])).created
        async with running_worker(stores, settings):
            await wait_for_states(stores, [ok.id, slow.id], DONE)
        yield ok, slow, calls
    finally:
        await server.close()


async def _ok_delivered_once_slow_handed_back(outbox, ok, slow, calls) -> None:
    rows = {r["job_id"]: r for r in await outbox.pool.fetch(
        "SELECT job_id, status, attempts FROM outbox")}
    assert (rows[ok.id]["status"], rows[ok.id]["attempts"]) == ("delivered", 1)
    assert (rows[slow.id]["status"], rows[slow.id]["attempts"]) == ("pending", 0)
    assert calls["ok"] == 1


async def test_a_stopped_notifier_records_what_went_out_and_hands_back_the_rest(
        stores, servers, outbox):
    # One batch: a hook answered at once and one that hangs. Stopped while the second
    # hangs, the notifier records the first as delivered (handing it back would send it
    # again) and hands back the second alone.
    settings = notify_settings(servers, shutdown_grace=0.5, webhook_timeout=20.0)
    async with _ok_and_slow_hooks(stores, settings) as (ok, slow, calls):
        async with running_notifier(settings, outbox, servers):
            await wait_until(lambda: asyncio.sleep(0, calls == {"ok": 1, "slow": 1}))
    await _ok_delivered_once_slow_handed_back(outbox, ok, slow, calls)

async def test_an_email_the_mail_library_will_not_write_fails_alone(
        stores, servers, outbox, smtp):
    # A workflow named with a line break (the library takes any name) makes a Subject
    # the email package refuses. That row fails; the batch's other mail goes out once.
    from taskflow.jobs import submit_workflow
    from taskflow.models import WorkflowNode

    settings = notify_settings(servers, smtp={"host": "127.0.0.1", "port": smtp.port,
                                              "from": "taskflow@example.com"})
    await outbox.insert_subscription("default", ["workflow.succeeded", "job.succeeded"],
                                     None, None, None, ["ops@example.com"])
    _, jobs = await submit_workflow(stores.store, stores.dispatch, "default",
                                    "nightly\r\nBcc: victim@example.com",
                                    [WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1))])
    async with running_worker(stores, settings):
        await wait_for_states(stores, list(jobs.values()), DONE)
    async with running_notifier(settings, outbox, servers):

        async def settled() -> bool:
            return await statuses(outbox) == {"delivered": 1, "failed": 1}

        await wait_until(settled)
    failed = await outbox.pool.fetchrow(
        "SELECT event, attempts, last_error FROM outbox WHERE status = 'failed'")
    assert failed["event"] == "workflow.succeeded" and failed["attempts"] == 1
    assert "cannot be written as an email" in failed["last_error"]
    assert [m.rcpt_tos for m in smtp.messages()] == [["ops@example.com"]]  # sent once
    assert "victim" not in str(smtp.recipients())


async def test_recipients_refused_for_now_get_the_retry_alone(stores, servers, outbox, smtp):
    settings = notify_settings(servers, smtp={"host": "127.0.0.1", "port": smtp.port,
                                              "from": "taskflow@example.com"})
    smtp.inbox.busy = {"busy@example.com"}
    result = await submit(stores.store, stores.dispatch, [NewJob(
        task="noop", max_attempts=1, notify=JobNotify(on=("succeeded",),
                                      email=("ops@example.com", "busy@example.com")))])
    job_id = result.created[0].id
    async with running_worker(stores, settings):
        await wait_for_states(stores, [job_id], DONE)
    async with running_notifier(settings, outbox, servers):

        async def retried() -> bool:
            rows = await outbox_rows(outbox)
            return rows[0]["attempts"] >= 2 and rows[0]["status"] == "pending"

        await wait_until(retried)
        smtp.inbox.busy = set()
        await all_delivered(outbox, 1)
    # ops@ had it from the first attempt, and only busy@ from a later one.
    assert sorted(m.rcpt_tos for m in smtp.messages()) == [
        ["busy@example.com"], ["ops@example.com"]]
    row = (await outbox_rows(outbox))[0]
    assert "busy@example.com: 451" in (await outbox.pool.fetchval(
        "SELECT error FROM outbox_attempts WHERE outbox_id = $1 ORDER BY id LIMIT 1",
        row["id"]))




async def test_a_record_cut_short_by_the_shutdown_is_made_again_not_handed_back(
        stores, servers, outbox):
    # The answered hook's record waits on a row lock (PostgreSQL slow) when the grace
    # runs out and the delivering task is cancelled: the notifier records it once the
    # lock goes, instead of handing it back to be sent again.
    import asyncpg

    locker = await asyncpg.connect(servers.database_url)
    locked = asyncio.Event()

    async def hold_its_row() -> None:  # before the notifier records the answer
        await locker.execute("BEGIN")
        await locker.execute("SELECT 1 FROM outbox WHERE target LIKE '%/ok' FOR UPDATE")
        locked.set()

    settings = notify_settings(servers, shutdown_grace=0.3, webhook_timeout=20.0)
    try:
        async with _ok_and_slow_hooks(stores, settings, hold_its_row) as (ok, slow, calls):
            stop = asyncio.Event()
            notifier = asyncio.create_task(run_notifier(
                settings, outbox, servers.database_url, stop, health_port=0))
            try:
                await wait_until(lambda: asyncio.sleep(0, locked.is_set() and calls["slow"]))
                await asyncio.sleep(0.2)  # the record of the answer waits on the lock
                stop.set()
                await asyncio.sleep(1.5)  # the grace ran out, the delivery was cancelled
            finally:
                stop.set()
                await locker.execute("ROLLBACK")
                await asyncio.wait_for(notifier, 30)
    finally:
        await locker.close()
    await _ok_delivered_once_slow_handed_back(outbox, ok, slow, calls)


async def test_a_channel_does_not_wait_on_another(stores, servers, outbox, smtp):
    # A webhook hangs (20 s to its timeout); an email that comes meanwhile goes out at
    # once: each channel claims and delivers on its own (one loop held every channel's
    # next claim until its whole batch ended).
    settings = notify_settings(servers, webhook_timeout=20.0, smtp={
        "host": "127.0.0.1", "port": smtp.port, "from": "taskflow@example.com"})
    async with _ok_and_slow_hooks(stores, settings) as (_, _, calls):
        async with running_notifier(settings, outbox, servers):
            await wait_until(lambda: asyncio.sleep(0, calls["slow"] == 1))
            mail = (await submit(stores.store, stores.dispatch, [NewJob(
                task="noop", max_attempts=1,
                notify=JobNotify(on=("succeeded",), email=("ops@example.com",)))])).created
            async with running_worker(stores, settings):
                await wait_for_states(stores, [mail[0].id], DONE)
            began = asyncio.get_running_loop().time()
            await wait_until(lambda: asyncio.sleep(0, smtp.messages()), timeout=10)
            assert asyncio.get_running_loop().time() - began < 5
            assert calls["slow"] == 1  # still hanging: its batch has not ended
