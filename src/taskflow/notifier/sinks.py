"""The protocol every delivery channel implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from taskflow.adapters.outbox import Delivery
from taskflow.notifier.backoff import Attempted


Report = Callable[[Delivery, Attempted], None]
"""How a sink tells the notifier that one item's attempt ended."""


class Sink(Protocol):
    """Delivers outbox rows of one channel (``dead_letter``, ``webhook`` or ``email``)."""

    channel: str
    backend: str
    """What the channel goes to (kafka, rabbitmq, http, smtp): registered and logged."""

    async def deliver(self, items: Sequence[Delivery], done: Report) -> None:
        """One attempt per item, each told to ``done`` as soon as it ended (so that a
        shutdown cutting the batch short records what went out, and sends only the rest
        again). Never raises for a failed delivery: an error is an :class:`Attempted`
        that says whether to retry."""
        ...

    async def close(self) -> None: ...
