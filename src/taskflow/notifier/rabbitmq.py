"""Dead letters to a RabbitMQ queue (aio-pika, the ``rabbitmq`` extra): a durable queue,
persistent messages and publisher confirms; a row is marked published only after the
broker confirmed it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from taskflow.adapters.outbox import Delivery
from taskflow.config import RabbitMQSettings
from taskflow.notifier.backoff import Attempted
from taskflow.notifier.sinks import Report

log = logging.getLogger(__name__)


class RabbitMQDeadLetters:
    channel = "dead_letter"
    backend = "rabbitmq"

    def __init__(self, settings: RabbitMQSettings) -> None:
        try:
            import aio_pika
        except ImportError:  # pragma: no cover - depends on the installation
            raise RuntimeError("dlq.backend = rabbitmq needs aio-pika: "
                               "pip install 'taskflow[rabbitmq]'") from None
        self._pika = aio_pika
        self.settings = settings
        self._connection: Any = None
        self._channel: Any = None

    async def _ready(self) -> Any:
        if self._channel is None or self._channel.is_closed:
            await self._reset()
            self._connection = await self._pika.connect(self.settings.url,
                                                        timeout=self.settings.timeout)
            self._channel = await self._connection.channel(publisher_confirms=True)
            await self._channel.declare_queue(self.settings.queue, durable=True)
        return self._channel

    async def deliver(self, items: Sequence[Delivery], done: Report) -> None:
        pika = self._pika
        try:
            channel = await self._ready()
        except (TimeoutError, OSError, pika.exceptions.AMQPError) as exc:
            await self._reset()
            for item in items:
                done(item, Attempted.retry(f"RabbitMQ: {type(exc).__name__}: {exc}"))
            return

        async def publish(item: Delivery) -> bool:
            message = pika.Message(
                item.body.encode(), content_type="application/json",
                delivery_mode=pika.DeliveryMode.PERSISTENT, message_id=str(item.job_id),
                headers={"event": item.event})
            try:
                await channel.default_exchange.publish(
                    message, routing_key=self.settings.queue, timeout=self.settings.timeout)
            except (TimeoutError, OSError, pika.exceptions.AMQPError) as exc:
                done(item, Attempted.retry(f"RabbitMQ: {type(exc).__name__}: {exc}"))
                return False
            done(item, Attempted.delivered())
            return True

        if not all(await asyncio.gather(*(publish(i) for i in items))):
            await self._reset()

    async def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:  # broken already; a fresh connection follows
                log.debug("closing a failed RabbitMQ connection", exc_info=True)

    async def close(self) -> None:
        await self._reset()
