"""Real servers for the notification tests, over 127.0.0.1: a Kafka-protocol broker
(noida-db, from its PyPI wheel), an SMTP server (aiosmtpd) and a webhook receiver (aiohttp)
that verifies every request with the Standard Webhooks reference library. Each can be
stopped and started again to stage an outage."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class KafkaBroker:
    """noida-db's Kafka service, run as its binary directly (its Python wrapper leaves the
    server behind when it exits). Keeps its port and data across stop/start."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        spec = find_spec("noida_db")
        assert spec is not None and spec.origin is not None, "noida-db is not installed"
        self.binary = str(Path(spec.origin).parent / "noida-db")
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [self.binary, "start", "--only", "kafka", "--kafka-port", str(self.port),
                 "--data-dir", str(self.data_dir)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"noida-db did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


async def read_topic(bootstrap: str, topic: str, want: int, timeout: float = 30.0
                     ) -> list[Any]:
    """Every record of ``topic`` (no consumer group: assign and seek to the beginning),
    once at least ``want`` are there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p)
                 for p in (consumer.partitions_for_topic(topic) or ())]
        deadline = time.monotonic() + timeout
        while not parts:
            await consumer.client.force_metadata_update()
            parts = [TopicPartition(topic, p)
                     for p in (consumer.partitions_for_topic(topic) or ())]
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} does not exist")
            await asyncio.sleep(0.2)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        while len(records) < want:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(records)} records on {topic}, wanted {want}")
        # Anything beyond `want` (a duplicate) would show up within a moment.
        for recs in (await consumer.getmany(timeout_ms=300)).values():
            records.extend(recs)
        return records
    finally:
        await consumer.stop()


class Receiver:
    """A webhook receiver: verifies each request's signature with ``standardwebhooks``
    (a bad one is answered 401 and recorded as such) and answers from ``script`` (status
    codes, then 200 for ever)."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.script: list[int] = []
        self.received: list[dict[str, Any]] = []  # verified deliveries, in arrival order
        self.rejected: list[str] = []
        self.delay = 0.0  # seconds each request takes to answer
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        payload = None
        for secret in self.secrets:
            try:
                payload = Webhook(secret).verify(body, headers)
                break
            except Exception as exc:  # WebhookVerificationError or ValueError
                error = f"{type(exc).__name__}: {exc}"
        if payload is None:
            self.rejected.append(error if self.secrets else "no secret configured")
            return web.Response(status=401)
        status = self.script.pop(0) if self.script else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append({"id": request.headers["webhook-id"], "status": status,
                              "body": json.loads(body)})
        headers = {"Retry-After": "0"} if status in (429, 503) else {}
        return web.Response(status=status, headers=headers)

    def ids_delivered(self) -> list[str]:
        return [r["id"] for r in self.received if 200 <= r["status"] < 300]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.busy: set[str] = set()  # recipients refused for now (451)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.busy:
            return "451 4.2.1 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


class SmtpServer:
    """aiosmtpd in a thread of its own, on a fixed port so it can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = _Inbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def messages(self) -> list[Any]:
        return list(self.inbox.messages)

    def recipients(self) -> list[tuple[str, ...]]:
        return [tuple(m.rcpt_tos) for m in self.inbox.messages]


def header(message: Any, name: str) -> str:
    from email import message_from_bytes

    return message_from_bytes(message.content)[name]


def count(items: Iterable[Any]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out
