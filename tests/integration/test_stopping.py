"""Roles stop when asked, at whatever moment the request comes: a cancellation lost in a
Redis client call (Python 3.11's ``asyncio.wait_for``) is delivered again."""

from __future__ import annotations

import asyncio
import random

from taskflow.adapters.redis import WakeListener
from taskflow import supervise
from taskflow.supervise import cancel_and_wait
from tests.helpers import ends_within, running_worker

# Enough tries that, without the second delivery, a listener left running is all but
# certain: about one cancel in three landed in the window on this machine.
TRIES = 200


async def test_a_wake_listener_stops_whenever_it_is_cancelled(stores, monkeypatch):
    monkeypatch.setattr(supervise, "RECANCEL_AFTER", 0.02)  # a lost cancel costs less
    rng = random.Random(11)
    for attempt in range(TRIES):
        listener = WakeListener(stores.dispatch, ["default", "other"])
        task = asyncio.create_task(listener.run())
        # Anywhere in its start: the subscribe, reading Redis's clock, the first read.
        await asyncio.sleep(rng.uniform(0, 0.004))
        stopping = asyncio.create_task(cancel_and_wait(task))
        assert await ends_within(stopping, 5, task), (
            f"try {attempt}: the listener kept running after it was cancelled")
        assert task.cancelled()
        assert not listener.listening  # it tells it is no longer listening


async def test_a_worker_stops_when_asked_during_its_start(stores, settings):
    rng = random.Random(12)
    for attempt in range(60):
        stopped = False
        try:
            async with running_worker(stores, settings, maintenance=False):
                await asyncio.sleep(rng.uniform(0, 0.005))
            stopped = True
        except TimeoutError:
            pass
        assert stopped, f"try {attempt}: the worker did not stop within 30 s"
