"""Waiting for jobs to change, without a poll per waiter: one pub/sub subscription per
API process, fanned out to the requests that wait.

Workers publish one message per outcome flush on ``{prefix}:changed`` naming the jobs
whose state changed (in the pipeline that settles the flush: no extra round trip); the
API's cancel and retry and the reaper's rescues publish too. A message is only a hint to
look again: a waiter always reads its state from PostgreSQL, so a message's content is
never trusted and a duplicate costs one read.

Races and losses:

- a waiter registers *before* it reads, so a change committed between its read and its
  registration still wakes it (no window where a message can slip past);
- while the subscription is down (Redis restarted, connection lost) messages are lost:
  every waiter is woken when it is (re)established, and reads again;
- a wait bounded by ``wait=S`` reads again when S runs out, so a lost message costs at
  most S; an event stream reads again at every heartbeat.

Waiters woken together (a flush that ended 500 jobs, a resubscription waking 10,000) read
through :class:`JobReads`, which turns their reads into a few ``id = ANY(...)`` queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Generic, TypeVar

from litestar.types import Receive

from taskflow.adapters.postgres import PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow.models import Job

log = logging.getLogger(__name__)

T = TypeVar("T")


class Watcher:
    """One waiting request: ``changed`` is set when something it watches may have
    changed, or when its client went away (``gone``)."""

    __slots__ = ("changed", "gone", "keys")

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.gone = False
        self.keys: set[str] = set()


class ChangeFeed:
    """The process's one subscription to the changed channel and its waiters by key (a
    job or workflow id as text)."""

    def __init__(self, dispatch: RedisDispatch) -> None:
        self.dispatch = dispatch
        self.channel = dispatch.changed_channel
        self._by_key: dict[str, set[Watcher]] = {}
        self._count = 0
        self.closing = False

    def close(self) -> None:
        """The process is stopping: every wait answers the state as it is now and every
        event stream ends (its client resumes with ``Last-Event-ID``), those that start
        from now on too, so that open requests end within the graceful shutdown."""
        self.closing = True
        self.wake_all()

    def __len__(self) -> int:
        """Waiters registered now."""
        return self._count

    @contextlib.contextmanager
    def watch(self, keys: Iterable[object]) -> Iterator[Watcher]:
        """Register a waiter on ``keys`` for the block's duration (a cancelled request
        leaves the registry at once)."""
        watcher = Watcher()
        self.add_keys(watcher, keys)
        self._count += 1
        try:
            yield watcher
        finally:
            self._count -= 1
            for name in watcher.keys:
                waiting = self._by_key.get(name)
                if waiting is not None:
                    waiting.discard(watcher)
                    if not waiting:
                        del self._by_key[name]

    def add_keys(self, watcher: Watcher, keys: Iterable[object]) -> None:
        """Wake ``watcher`` (registered by :meth:`watch`) on these keys too."""
        for key in keys:
            name = str(key)
            watcher.keys.add(name)
            self._by_key.setdefault(name, set()).add(watcher)

    def notify(self, message: str) -> None:
        by_key = self._by_key
        for name in message.split():
            for watcher in by_key.get(name, ()):
                watcher.changed.set()

    def wake_all(self) -> None:
        for waiting in self._by_key.values():
            for watcher in waiting:
                watcher.changed.set()

    async def run(self) -> None:
        """Listen until cancelled (under :func:`taskflow.supervise.supervised`, which
        restarts it when the connection fails). Every waiter reads again when the
        subscription starts and when it ends: messages sent meanwhile are lost. It starts
        when Redis confirms it, not when SUBSCRIBE is sent: a waiter woken in between
        could read PostgreSQL before a change whose message Redis then drops."""
        pubsub = self.dispatch.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:
                # No read timeout on an idle subscription (socket_timeout would end it).
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "message":
                    self.notify(message["data"])
                elif message["type"] == "subscribe":
                    self.wake_all()
        finally:
            self.wake_all()
            await pubsub.aclose()


async def until_disconnected(receive: Receive, watcher: Watcher) -> None:
    """Wait for the client to go away (the request's body was read already, or is
    empty), then wake its waiter for good."""
    while (await receive())["type"] != "http.disconnect":
        pass
    watcher.gone = True
    watcher.changed.set()


async def wait_until(
    feed: ChangeFeed, keys: Iterable[object], read: Callable[[], Awaitable[T]],
    done: Callable[[T], bool], seconds: float, receive: Receive | None = None,
) -> T:
    """Read until ``done(value)`` or ``seconds`` pass, reading again only when the feed
    says one of ``keys`` changed; answers the last value read. With ``receive``, stops
    as soon as the client disconnects; once the feed closes, answers what it reads."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with feed.watch(keys) as watcher:
        gone = (asyncio.create_task(until_disconnected(receive, watcher))
                if receive is not None else None)
        try:
            while True:
                watcher.changed.clear()
                value = await read()  # after registering: a change from now on wakes us
                if done(value) or watcher.gone or feed.closing:
                    return value
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return value
                try:
                    async with asyncio.timeout(remaining):
                        await watcher.changed.wait()
                except TimeoutError:
                    if watcher.gone:
                        return value
                    return await read()  # S is up: the state as it is now
                if watcher.gone:
                    return value
        finally:
            if gone is not None:
                gone.cancel()


K = TypeVar("K")


class Coalesced(Generic[K, T]):
    """Reads by key, coalesced: the keys asked for while a query is in flight go out
    together in the next one (``fetch``, up to ``max_batch`` keys), so waiters woken at
    once cost a few queries, not one each. A lone read costs one query, as a plain read
    would."""

    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, T]]],
                 max_batch: int = 1000) -> None:
        self.fetch = fetch
        self.max_batch = max_batch
        self._pending: dict[K, list[asyncio.Future[T | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def get(self, key: K) -> T | None:
        future: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_pending())
        return await future  # a caller that gives up cancels only its own future

    async def _read_pending(self) -> None:
        try:
            while self._pending:
                keys = list(itertools.islice(self._pending, self.max_batch))
                batch = {k: self._pending.pop(k) for k in keys}
                try:
                    found = await self.fetch(keys)
                except Exception as exc:  # noqa: BLE001 - handed to every reader
                    for futures in batch.values():
                        for f in futures:
                            if not f.done():
                                f.set_exception(exc)
                    continue
                except BaseException:
                    for futures in batch.values():
                        for f in futures:
                            f.cancel()
                    raise
                for key, futures in batch.items():
                    for f in futures:
                        if not f.done():
                            f.set_result(found.get(key))
        finally:
            self._reader = None
            for futures in self._pending.values():  # only when cancelled mid-way
                for f in futures:
                    f.cancel()
            self._pending.clear()


class JobReads:
    """What waiters read, coalesced (see :class:`Coalesced`): a job (``wait=``) and a
    job with its finished attempts (event streams)."""

    def __init__(self, store: PostgresStore, max_batch: int = 1000) -> None:
        async def jobs(ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
            return {j.id: j for j in await store.get_jobs(ids)}

        self.job = Coalesced(jobs, max_batch)
        self.history = Coalesced(store.job_histories, max_batch)
