"""The protocol every delivery channel implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from taskflow.adapters.outbox import Delivery
from taskflow.notifier.backoff import Attempted


class Sink(Protocol):
    """Delivers outbox rows of one channel (``dead_letter``, ``webhook`` or ``email``)."""

    channel: str
    backend: str
    """What the channel goes to (kafka, rabbitmq, http, smtp): registered and logged."""

    async def deliver(self, items: Sequence[Delivery]) -> list[Attempted]:
        """One attempt per item, results in the same order. Never raises for a failed
        delivery: an error is an :class:`Attempted` that says whether to retry."""
        ...

    async def close(self) -> None: ...
