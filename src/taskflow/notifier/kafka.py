"""Dead letters to a Kafka topic (aiokafka): key = job id, value = the dead letter as
JSON, header ``event``; ``acks="all"`` and an idempotent producer (``idempotent``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from taskflow.adapters.outbox import Delivery
from taskflow.config import KafkaSettings
from taskflow.notifier.backoff import Attempted
from taskflow.notifier.sinks import Report

log = logging.getLogger(__name__)


class KafkaDeadLetters:
    """Publishes a batch and waits for every acknowledgement; a row is marked published
    only once the broker has it. While the broker is away every row is retried (dead
    letters never give up), so an outage delays them and loses none."""

    channel = "dead_letter"
    backend = "kafka"

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._topic_ready = not settings.create_topic

    async def _ensure_topic(self) -> None:
        s = self.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers,
                                    client_id=s.client_id,
                                    request_timeout_ms=int(s.request_timeout * 1000))
        await admin.start()
        try:
            if s.topic not in await admin.list_topics():
                await admin.create_topics([NewTopic(s.topic, s.partitions,
                                                    s.replication_factor)])
                log.info("created Kafka topic %s", s.topic)
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
        self._topic_ready = True

    async def _ready(self) -> AIOKafkaProducer:
        if not self._topic_ready:
            await self._ensure_topic()
        if self._producer is None:
            s = self.settings
            producer = AIOKafkaProducer(
                bootstrap_servers=s.bootstrap_servers, client_id=s.client_id,
                acks="all", enable_idempotence=s.idempotent,
                request_timeout_ms=int(s.request_timeout * 1000))
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def deliver(self, items: Sequence[Delivery], done: Report) -> None:
        try:
            # Bounded: with the broker away, aiokafka's send waits for its metadata
            # without end, and the claim of the rows would be kept meanwhile.
            acks = await asyncio.wait_for(self._publish(items), self.settings.request_timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            await self._reset()
            for item in items:
                done(item, Attempted.retry(f"Kafka: {type(exc).__name__}: {exc}".rstrip(": ")))
            return
        failed = False
        for item, ack in zip(items, acks):
            if isinstance(ack, BaseException):
                failed = True
                done(item, Attempted.retry(f"Kafka: {type(ack).__name__}: {ack}"))
            else:
                done(item, Attempted.delivered())
        if failed:
            await self._reset()  # start over with a fresh producer (and sequence numbers)

    async def _publish(self, items: Sequence[Delivery]) -> list[object]:
        """Send every item, then wait for every acknowledgement (or its error)."""
        producer = await self._ready()
        sent = [await producer.send(
                    self.settings.topic, key=str(i.job_id).encode(),
                    value=i.body.encode(), headers=[("event", i.event.encode())])
                for i in items]
        return await asyncio.gather(*sent, return_exceptions=True)

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                # Bounded: stop() flushes what the producer holds and, with the broker
                # away, waits for it without end (a notifier told to stop hung there,
                # then published rows it had handed back, which another notifier
                # published too). What it drops, the outbox still has.
                await asyncio.wait_for(producer.stop(), self.settings.request_timeout)
            except Exception:  # it is broken already; a fresh one follows
                log.debug("stopping a failed Kafka producer", exc_info=True)

    async def close(self) -> None:
        await self._reset()
