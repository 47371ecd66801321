"""Each role takes what it loaded before serving out of the cyclic garbage collector's
sight (taskflow.runtime.freeze_startup_heap), so that its full collections walk only what
it made since: the worker, the API and the notifier, each as its entrypoint runs it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import msgspec
import pytest

from taskflow.adapters.outbox import OutboxStore
from taskflow.api.app import create_app
from taskflow.api.server import bind, run_api
from taskflow.notifier.role import run_notifier
from taskflow.runtime import run_worker


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()  # what earlier tests of this process may have frozen
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


def _stopped() -> asyncio.Event:
    stop = asyncio.Event()
    stop.set()
    return stop


async def test_the_worker_freezes_its_startup_heap(unfrozen, stores, settings):
    await asyncio.wait_for(run_worker(settings, stores, _stopped(), maintenance=False), 30)
    assert gc.get_freeze_count() > 10_000


async def test_the_api_freezes_its_startup_heap(unfrozen, stores, settings):
    app = create_app(msgspec.structs.replace(settings, jwt_secret="s" * 32), stores)
    sock = bind("127.0.0.1", 0)
    try:
        await asyncio.wait_for(run_api(app, sock, _stopped()), 30)
    finally:
        sock.close()
    assert gc.get_freeze_count() > 10_000


async def test_the_notifier_freezes_its_startup_heap(unfrozen, stores, servers, settings):
    outbox = OutboxStore(stores.store.pool)
    await asyncio.wait_for(run_notifier(settings, outbox, servers.database_url, _stopped(),
                                        health_port=0), 30)
    assert gc.get_freeze_count() > 10_000
