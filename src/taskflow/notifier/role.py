"""Wires the notifier role from settings: its sinks, its loop and its health port."""

from __future__ import annotations

import asyncio
import logging

from taskflow.adapters.outbox import OutboxStore
from taskflow.config import Settings
from taskflow.notifier.notifier import Notifier
from taskflow.notifier.sinks import Sink
from taskflow.outbound import OutboundClient
from taskflow.runtime import freeze_startup_heap

log = logging.getLogger(__name__)


def build_sinks(settings: Settings, outbox: OutboxStore) -> list[Sink]:
    """Webhooks always; email when an SMTP host is set; the configured DLQ backend."""
    from taskflow.notifier.webhook import WebhookSink

    n = settings.notify
    sinks: list[Sink] = [WebhookSink(
        OutboundClient(settings.outbound), timeout=n.webhook_timeout,
        concurrency=n.concurrency, global_secret=n.webhook_secret,
        tenant_secret=outbox.webhook_secret)]
    if n.smtp.host:
        from taskflow.notifier.email import EmailSink

        sinks.append(EmailSink(n.smtp, n.api_url))
    if settings.dlq.backend == "kafka":
        from taskflow.notifier.kafka import KafkaDeadLetters

        sinks.append(KafkaDeadLetters(settings.dlq.kafka))
    elif settings.dlq.backend == "rabbitmq":
        from taskflow.notifier.rabbitmq import RabbitMQDeadLetters

        sinks.append(RabbitMQDeadLetters(settings.dlq.rabbitmq))
    return sinks


async def run_notifier(settings: Settings, outbox: OutboxStore, database_url: str,
                       stop: asyncio.Event, *, health_port: int | None = None) -> None:
    """Run until ``stop``; serve /metrics, /healthz and /readyz on ``health_port``
    (None: notify.metrics_port; 0 there: no port)."""
    from taskflow.ops_http import ops_server

    notifier = Notifier(settings.notify, outbox, database_url, build_sinks(settings, outbox))
    port = settings.notify.metrics_port if health_port is None else health_port

    async def listening() -> None:
        if not (notifier.listening and notifier.registered):
            raise ConnectionError("the LISTEN connection is not up")

    checks = {"postgres": lambda: outbox.pool.fetchval("SELECT 1"), "listen": listening}
    async with ops_server(settings.notify.metrics_host, port, checks):
        freeze_startup_heap()
        await notifier.run(stop)
