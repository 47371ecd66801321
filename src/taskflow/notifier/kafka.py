"""Dead letters to a Kafka topic (aiokafka): key = job id, value = the dead letter as
JSON, header ``event``; ``acks="all"`` and an idempotent producer (``idempotent``)."""

from __future__ import annotations

import asyncio
import functools
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


def _acknowledged(done: Report, item: Delivery, ack: asyncio.Future[object]) -> None:
    if ack.cancelled():
        return  # the producer was reset: deliver() reports it unacknowledged
    error = ack.exception()
    done(item, Attempted.delivered() if error is None
         else Attempted.retry(f"Kafka: {type(error).__name__}: {error}"))


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
        # Each acknowledgement is reported as it arrives. Waits are bounded by
        # request_timeout: with the broker gone, aiokafka waits for it without end (and
        # the rows' claim would be kept meanwhile); what was not acknowledged by then is
        # retried.
        timeout = self.settings.request_timeout
        acks: list[asyncio.Future[object]] = []
        try:
            producer = await asyncio.wait_for(self._ready(), timeout)
            for item in items:
                ack = await asyncio.wait_for(producer.send(
                    self.settings.topic, key=str(item.job_id).encode(),
                    value=item.body.encode(), headers=[("event", item.event.encode())]),
                    timeout)
                ack.add_done_callback(functools.partial(_acknowledged, done, item))
                acks.append(ack)
            if acks:
                await asyncio.wait(acks, timeout=timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            error = f"Kafka: {type(exc).__name__}: {exc}".rstrip(": ")
        else:
            error = f"Kafka: no acknowledgement within {timeout:g}s"
        unacknowledged = [item for item, ack in zip(items, acks) if not ack.done()]
        unacknowledged += items[len(acks):]  # never sent
        failed = any(ack.done() and not ack.cancelled() and ack.exception() is not None
                     for ack in acks)
        for item in unacknowledged:
            done(item, Attempted.retry(error))
        if unacknowledged or failed:
            await self._reset()  # start over with a fresh producer (and sequence numbers)

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
