"""The worker's wake listener and the API's change feed start from Redis's confirmation
of their subscriptions, not from sending SUBSCRIBE (a message published in between is
dropped by Redis). The wake listener: a flush starts released jobs only in queues
where nothing indexed since the last claim could have gone unheard (see the worker's
``_seats_for``), so a listener that says it hears everything must. The change feed wakes
every waiter to read PostgreSQL again when its subscription starts: a waiter woken before
Redis has it could read before a change whose message is then lost, and wait for nothing
until its time runs out."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from taskflow.adapters.redis import RedisDispatch, WakeListener
from taskflow.api.watch import ChangeFeed
from taskflow.supervise import cancel_and_wait
from tests.helpers import wait_until


class HoldingProxy:
    """A TCP proxy on loopback in front of the real Redis that can hold back what a client
    sends from the first chunk that contains ``marker`` on (the rest of that connection's
    stream waits behind it, in order)."""

    def __init__(self, host: str, port: int, marker: bytes) -> None:
        self.upstream = (host, port)
        self.marker = marker
        self.holding = False
        self.held = asyncio.Event()  # a chunk with the marker is being held
        self._release = asyncio.Event()
        self._links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        self.holding = True
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        self.holding = False
        self._release.set()

    async def close(self) -> None:
        self.release()
        for client, server in self._links:
            client.transport.abort()
            server.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._links.append((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer, outbound=True),
                             self._pipe(up_reader, writer, outbound=False),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    outbound: bool) -> None:
        holding_this = False
        try:
            while chunk := await reader.read(65536):
                if outbound and self.holding and (holding_this or self.marker in chunk):
                    holding_this = True
                    self.held.set()
                    await self._release.wait()
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def behind_proxy(redis_url: str):
    """A RedisDispatch whose connections go through a HoldingProxy (held on SUBSCRIBE),
    and a way to run a listener's ``run`` that is stopped at the end."""
    url = urlsplit(redis_url)
    proxy = HoldingProxy(url.hostname or "127.0.0.1", url.port or 6379, b"SUBSCRIBE")
    port = await proxy.start()
    client = aioredis.Redis.from_url(
        urlunsplit(url._replace(netloc=f"127.0.0.1:{port}")), decode_responses=True,
        socket_timeout=5.0)
    running: list[asyncio.Task[None]] = []
    try:
        yield proxy, RedisDispatch(client), lambda run: running.append(asyncio.create_task(run()))
    finally:
        await cancel_and_wait(*running)
        await proxy.close()
        await client.aclose()


async def _listening(listener: WakeListener) -> bool:
    return listener.listening


async def test_not_listening_before_redis_takes_the_subscription(servers):
    async with behind_proxy(servers.redis_url) as (proxy, dispatch, start):
        listener = WakeListener(dispatch, ["default"])
        proxy.hold()
        start(listener.run)
        await asyncio.wait_for(proxy.held.wait(), 5)  # SUBSCRIBE sent, not in Redis
        await asyncio.sleep(0.3)  # time enough to read Redis's clock on another link
        assert not listener.listening
        assert listener.indexed_since("default", 0)  # anything may have gone unheard
        proxy.release()
        await wait_until(lambda: _listening(listener), timeout=5)


async def test_the_change_feed_wakes_its_waiters_once_redis_has_the_subscription(
        servers, redis_client):
    async with behind_proxy(servers.redis_url) as (proxy, dispatch, start):
        feed = ChangeFeed(dispatch)
        with feed.watch(["job-1"]) as watcher:
            proxy.hold()
            start(feed.run)
            await asyncio.wait_for(proxy.held.wait(), 5)  # SUBSCRIBE sent, not in Redis
            await asyncio.sleep(0.1)
            watcher.changed.clear()  # had it been woken, it has read PostgreSQL since
            # The job changes now: Redis drops the message (nobody is subscribed yet).
            assert await redis_client.publish(feed.channel, "job-1") == 0
            proxy.release()

            async def woken() -> bool:
                return watcher.changed.is_set()
            await wait_until(woken, timeout=5)  # to read again: the change is seen
