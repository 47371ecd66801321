"""Dead letters and notifications: what the outbox costs a drain nobody listens to, how
fast 10,000 failing jobs reach a Kafka topic, and webhook deliveries per second.

- Drain of ``BENCH_JOBS`` noop jobs with no subscribers, with the outbox triggers on and
  (as before the outbox existed) disabled, alternating rounds; the ratio is the cost.
- The same number of jobs failing with the Kafka DLQ on (a noida-db broker, one notifier
  process): seconds from the first start to the last acknowledged publication, against
  the drain time of the same run.
- Webhook deliveries per second from one notifier process to a local receiver.
- A filtered redrive of ``BENCH_REDRIVE`` (100,000) dead letters.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.common import Servers, drain, report, reset, servers, stores
from taskflow.adapters.outbox import OutboxStore
from taskflow.jobs import submit
from taskflow.models import NewJob

N = int(os.environ.get("BENCH_JOBS", "10000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WEBHOOKS = int(os.environ.get("BENCH_WEBHOOKS", "5000"))
REDRIVE = int(os.environ.get("BENCH_REDRIVE", "100000"))
TRIGGERS = ("jobs_outbox_update", "jobs_outbox_insert")
OUTBOX_RESET = "TRUNCATE outbox, outbox_attempts, outbox_sinks, subscriptions, webhook_secrets"
# Benchmark bookkeeping only (the engine's own SQL lives in queries.sql).
COUNT_FAILED = "SELECT count(*) FROM jobs WHERE state = 'failed'"
COUNT_DELIVERED = "SELECT count(*) FROM outbox WHERE status = 'delivered'"
PUBLISH_WINDOW = ("SELECT extract(epoch FROM (SELECT max(delivered_at) FROM outbox) - "
                  "(SELECT min(started_at) FROM jobs))")
FAIL_WINDOW = ("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs "
               "WHERE state = 'failed'")
DELIVERY_WINDOW = "SELECT extract(epoch FROM max(delivered_at) - min(delivered_at)) FROM outbox"


class NotifierProcess:
    def __init__(self, srv: Servers, **env: str) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        full_env.update({"TASKFLOW_DATABASE_URL": srv.database_url,
                         "TASKFLOW_REDIS_URL": srv.redis_url,
                         "TASKFLOW_DATA_DIR": str(srv.data_dir),
                         "TASKFLOW_LOG_LEVEL": "WARNING",
                         "TASKFLOW_NOTIFY__METRICS_PORT": "0", **env})
        self.process = subprocess.Popen([sys.executable, "-m", "taskflow.cli", "notify"],
                                        env=full_env)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def noop() -> NewJob:
    return NewJob(task="noop", max_attempts=1)


async def queue_jobs(s, make) -> None:
    for i in range(0, N, 1000):
        await submit(s.store, s.dispatch, [make() for _ in range(min(1000, N - i))])


async def drain_cost(srv: Servers, s) -> float:
    """Alternating rounds with the triggers disabled and enabled; returns the best
    enabled drain time."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for enabled in (False, True):
            verb = "ENABLE" if enabled else "DISABLE"
            for trigger in TRIGGERS:
                await s.store.pool.execute(f"ALTER TABLE jobs {verb} TRIGGER {trigger}")
            await queue_jobs(s, noop)
            times[enabled].append(await drain(srv, s, N))
            await reset(s)
    off, on = min(times[False]), min(times[True])
    report(f"drain {N:,} noop jobs, outbox triggers off", N / off, "jobs/s",
           f"(best of {ROUNDS}: {off:.2f}s)")
    report(f"drain {N:,} noop jobs, triggers on, no subscriber", N / on, "jobs/s",
           f"(best of {ROUNDS}: {on:.2f}s; {on / off:.3f}x the time)")
    return on


def start_broker(folder: Path) -> tuple[subprocess.Popen, str]:
    import socket
    from importlib.util import find_spec

    spec = find_spec("noida_db")
    if spec is None or spec.origin is None:
        raise SystemExit("bench_notify needs noida-db (pip install -e '.[test]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [str(Path(spec.origin).parent / "noida-db"), "start", "--only", "kafka",
         "--kafka-port", str(port), "--data-dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"127.0.0.1:{port}"
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("noida-db did not start")
        time.sleep(0.05)


async def topic_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        return sum(ends[p] - starts[p] for p in parts)
    finally:
        await consumer.stop()


def failing() -> NewJob:
    return NewJob(task="fail", max_attempts=1, payload={"retryable": False})


async def fail_all(srv: Servers, s, until: str) -> None:
    """Queue ``N`` failing jobs and run one worker process until ``until`` counts N."""
    from benchmarks.common import FAST_WORKER, WorkerProcess

    await queue_jobs(s, failing)
    worker = WorkerProcess(srv, **FAST_WORKER)
    try:
        while await s.store.pool.fetchval(until) < N:
            await asyncio.sleep(0.05)
    finally:
        worker.stop()


async def dead_letters(srv: Servers, s, drain_seconds: float) -> None:
    # The engine's failure path alone (no DLQ), for reference: it records an error
    # with its traceback per job, which a noop drain does not.
    await fail_all(srv, s, COUNT_FAILED)
    alone = float(await s.store.pool.fetchval(FAIL_WINDOW))
    report(f"{N:,} failing jobs, no DLQ", N / alone, "jobs/s",
           f"({alone:.2f}s first start to last finish; {alone / drain_seconds:.2f}x the "
           "noop drain)")
    await reset(s)

    folder = Path(tempfile.mkdtemp(prefix="kafka-", dir=srv.data_dir))  # removed with it
    broker, bootstrap = start_broker(folder)
    notifier = NotifierProcess(srv, TASKFLOW_DLQ__BACKEND="kafka",
                               TASKFLOW_DLQ__KAFKA__BOOTSTRAP_SERVERS=bootstrap,
                               TASKFLOW_NOTIFY__BATCH_SIZE="500")
    try:
        while not await s.store.pool.fetchval("SELECT count(*) FROM outbox_sinks"):
            await asyncio.sleep(0.05)
        await fail_all(srv, s, COUNT_DELIVERED)
        seconds = float(await s.store.pool.fetchval(PUBLISH_WINDOW))
        failing = float(await s.store.pool.fetchval(FAIL_WINDOW))
        on_topic = await topic_size(bootstrap, "taskflow.dead-letters")
        assert on_topic == N, f"{on_topic} dead letters on the topic, expected {N}"
        report(f"{N:,} failing jobs -> Kafka DLQ, all on the topic", N / seconds, "jobs/s",
               f"({seconds:.2f}s first start to last ack; {seconds / drain_seconds:.2f}x "
               f"the noop drain, {seconds / alone:.2f}x failing them without DLQ)")
        report("  the worker failing them, DLQ on", N / failing, "jobs/s",
               f"({failing:.2f}s first start to last finish)")
    finally:
        notifier.stop()
        broker.kill()
        broker.wait()
        await reset(s)
        await s.store.pool.execute(OUTBOX_RESET)


async def webhooks(srv: Servers, s) -> None:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    outbox = OutboxStore(s.store.pool)
    await outbox.insert_subscription("default", ["job.succeeded"], None, None, url, None)
    jobs = [noop() for _ in range(WEBHOOKS)]
    for i in range(0, WEBHOOKS, 1000):
        await s.store.insert_jobs(jobs[i:i + 1000])
    # End them in one statement: the triggers write one outbox row each.
    await s.store.pool.execute("UPDATE jobs SET state = 'succeeded', finished_at = now()")
    notifier = NotifierProcess(srv, TASKFLOW_OUTBOUND__ALLOWED_NETWORKS='["127.0.0.0/8"]',
                               TASKFLOW_NOTIFY__BATCH_SIZE="200",
                               TASKFLOW_NOTIFY__CONCURRENCY="100")
    try:
        while await s.store.pool.fetchval(COUNT_DELIVERED) < WEBHOOKS:
            await asyncio.sleep(0.05)
        seconds = float(await s.store.pool.fetchval(DELIVERY_WINDOW))
        report(f"webhooks delivered, one notifier process ({WEBHOOKS:,})",
               WEBHOOKS / seconds, "deliveries/s", f"({seconds:.2f}s, signed, loopback)")
    finally:
        notifier.stop()
        await runner.cleanup()
        await reset(s)
        await s.store.pool.execute(OUTBOX_RESET)


async def redrive(srv: Servers, s) -> None:
    """A filtered redrive of REDRIVE dead letters: pages of 500, each one transaction and
    one Redis round trip per queue."""
    from taskflow import deadletters
    from taskflow.adapters.outbox import DeadLetterQuery

    for i in range(0, REDRIVE, 5000):
        await s.store.insert_jobs([failing() for _ in range(min(5000, REDRIVE - i))])
    # Dead letters made directly in PostgreSQL: the subject is the redrive.
    await s.store.pool.execute("UPDATE jobs SET state = 'failed', attempts = 1, "
                               "finished_at = now(), error = 'bench'")
    began = time.perf_counter()
    done = await deadletters.redrive_matching(OutboxStore(s.store.pool), s.dispatch,
                                              "default", DeadLetterQuery(error="bench"),
                                              REDRIVE)
    seconds = time.perf_counter() - began
    assert len(done.ids) == REDRIVE and sum(await s.dispatch.depth("default")) == REDRIVE
    report(f"redrive {REDRIVE:,} dead letters by filter", REDRIVE / seconds, "jobs/s",
           f"({seconds:.2f}s in pages of {deadletters.PAGE})")
    await reset(s)


async def main(srv: Servers) -> None:
    async with stores(srv, migrate=True) as s:
        drain_seconds = await drain_cost(srv, s)
        await dead_letters(srv, s, drain_seconds)
        await webhooks(srv, s)
        await redrive(srv, s)


if __name__ == "__main__":
    with servers() as srv:
        asyncio.run(main(srv))
