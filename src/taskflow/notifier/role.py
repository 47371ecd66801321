"""Wires the notifier role from settings: its sinks, its loop and its health port."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from taskflow.adapters.outbox import OutboxStore
from taskflow.config import Settings
from taskflow.notifier.notifier import Notifier
from taskflow.notifier.sinks import Sink
from taskflow.outbound import OutboundClient

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
    from taskflow.notifier.health import health_app, serve_health

    notifier = Notifier(settings.notify, outbox, database_url, build_sinks(settings, outbox))
    port = settings.notify.metrics_port if health_port is None else health_port
    if not port:
        await notifier.run(stop)
        return
    host = settings.notify.metrics_host
    async with contextlib.AsyncExitStack() as stack:
        try:
            bound = await stack.enter_async_context(
                serve_health(health_app(notifier, outbox), host, port))
        except OSError as exc:
            raise SystemExit(f"taskflow: cannot serve the notifier's metrics on {host}:{port}:"
                             f" {exc} (set notify.metrics_port)") from None
        log.info("notifier health and metrics on http://%s:%d", host, bound)
        await notifier.run(stop)
