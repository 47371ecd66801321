"""Redis dispatch index: per-queue ready, delayed and in-flight sorted sets, and leases.

Redis is never the only copy of anything: PostgreSQL can rebuild all of it (see
:mod:`taskflow.worker.maintenance`). Every multi-key operation is one Lua script from
``lua/``; all keys of a queue share the ``{queue}`` hash tag, so Redis Cluster works.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Iterable, Sequence
from importlib import resources

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from taskflow.models import Claim, DispatchEntry, StartedJob
from taskflow.states import DISPATCHABLE


def _load(name: str) -> str:
    return resources.files("taskflow.adapters").joinpath("lua", f"{name}.lua").read_text()


class ClaimResult(msgspec.Struct, frozen=True):
    claims: list[Claim]
    next_due_ms: int | None  # due time of the earliest delayed job, if any
    at_us: int = 0  # Redis's clock when it claimed (microseconds)


class Heartbeat(msgspec.Struct, frozen=True):
    """What one heartbeat found (see ``extend.lua``)."""

    lost: list[str]  # another token holds the lease now
    cancel: list[str]  # a cancellation marker is set
    retaken: list[str]  # the lease was missing and is ours again, if PostgreSQL agrees


class QueueKeys(msgspec.Struct, frozen=True):
    ready: str
    delayed: str
    inflight: str
    lease_prefix: str
    cancel_prefix: str
    wake: str  # pub/sub: jobs were indexed
    cancel: str  # pub/sub: a job's cancellation was requested (message: its id)

    @classmethod
    def of(cls, prefix: str, queue: str) -> QueueKeys:
        base = f"{prefix}:{{{queue}}}"
        return cls(f"{base}:ready", f"{base}:delayed", f"{base}:inflight",
                   f"{base}:lease:", f"{base}:cancel:", f"{base}:wake", f"{base}:cancelled")


class ScriptBatch:
    """Commands for one round trip to Redis, script calls included. A redis-py ``Script``
    queued on a pipeline makes the pipeline's ``execute`` ask ``SCRIPT EXISTS`` first, on
    a connection of its own: a second round trip every time. Here script calls go out as
    bare ``EVALSHA``. When Redis refuses one with ``NOSCRIPT`` (it lost its scripts:
    restarted, flushed, failed over), that call did not run, and a later one may have run
    without it (an enqueue of a retry before the release of its lease, say: another
    client had loaded that script back), so every script call from the first refused one
    on runs again, in order, loading its script. The scripts batched must therefore be
    idempotent (release, adopt and enqueue are). Not for MULTI/EXEC: there a refused call
    cannot be run again on its own (see :meth:`RedisDispatch.reindex`)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pipe = client.pipeline(transaction=False)
        self._calls: list[tuple[AsyncScript, list, list] | None] = []

    async def script(self, script: AsyncScript, keys: list, args: list) -> None:
        self._pipe.evalsha(script.sha, len(keys), *keys, *args)
        self._calls.append((script, keys, args))

    async def publish(self, channel: str, message: str) -> None:
        self._pipe.publish(channel, message)
        self._calls.append(None)

    async def execute(self) -> list:
        """The replies, in order; raises the first error, as a pipeline does."""
        try:
            replies = await self._pipe.execute(raise_on_error=False)
        finally:
            await self._pipe.reset()
        refused = next((i for i, reply in enumerate(replies)
                        if isinstance(reply, NoScriptError)), len(replies))
        for i in range(refused, len(replies)):
            call = self._calls[i]
            if call is not None:
                script, keys, args = call
                try:
                    replies[i] = await script(keys=keys, args=args)  # loads it on NOSCRIPT
                except aioredis.ResponseError as exc:  # as the pipeline would have
                    replies[i] = exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


class RedisDispatch:
    """The dispatch operations workers and the API perform on Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str = "tf") -> None:
        self.client = client
        self.prefix = prefix
        self._keys: dict[str, QueueKeys] = {}
        self._claim = client.register_script(_load("claim"))
        self._enqueue = client.register_script(_load("enqueue"))
        self._extend = client.register_script(_load("extend"))
        self._release = client.register_script(_load("release"))
        self._reap = client.register_script(_load("reap"))
        self._cancel = client.register_script(_load("cancel"))
        self._forget = client.register_script(_load("forget"))
        self._adopt = client.register_script(_load("adopt"))
        self.epoch_key = f"{prefix}:epoch"
        self.changed_channel = f"{prefix}:changed"

    def batch(self) -> ScriptBatch:
        """Commands to send in one round trip (see :class:`ScriptBatch`)."""
        return ScriptBatch(self.client)

    @staticmethod
    async def _call(
        script: AsyncScript, keys: list, args: list, pipe: Pipeline | ScriptBatch | None,
    ) -> object:
        """Run ``script`` now (``pipe`` None) or queue it on ``pipe``."""
        if isinstance(pipe, ScriptBatch):
            return await pipe.script(script, keys, args)
        return await script(keys=keys, args=args, client=pipe)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "tf", *, socket_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> RedisDispatch:
        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout)
        return cls(client, prefix)

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> None:
        await self.client.ping()

    def keys(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys.of(self.prefix, queue)
        return keys

    async def enqueue(
        self, entries: Iterable[DispatchEntry], pipe: Pipeline | ScriptBatch | None = None
    ) -> int:
        """Index jobs (one script call per queue); returns how many were added."""
        by_queue: dict[str, list[str | int]] = {}
        for e in entries:
            by_queue.setdefault(e.queue, []).extend((str(e.id), e.priority, e.due_ms))
        added = 0
        for queue, args in by_queue.items():
            k = self.keys(queue)
            # With a pipeline, awaiting only queues the call; the count comes from execute().
            result = await self._call(self._enqueue, [k.ready, k.delayed],
                                      [k.lease_prefix, k.wake, *args], pipe)
            if pipe is None:
                added += result
        return added

    async def claim(
        self, queue: str, limit: int, lease_ms: int, promote_limit: int = 1000
    ) -> ClaimResult:
        k = self.keys(queue)
        token_prefix = os.urandom(8).hex() + "."
        ids_tokens, next_due, at_us = await self._claim(
            keys=[k.ready, k.delayed, k.inflight],
            args=[k.lease_prefix, limit, lease_ms, token_prefix, promote_limit],
        )
        claims = [Claim(ids_tokens[i], ids_tokens[i + 1]) for i in range(0, len(ids_tokens), 2)]
        return ClaimResult(claims, None if next_due < 0 else int(next_due), int(at_us))

    async def extend(
        self, queue: str, claims: Sequence[Claim], lease_ms: int
    ) -> Heartbeat:
        """Extend the leases of ``claims``, taking back those Redis lost (see
        ``extend.lua``)."""
        k = self.keys(queue)
        args: list[str | int] = [k.lease_prefix, k.cancel_prefix, lease_ms]
        for c in claims:
            args += (c.id, c.token)
        lost, cancel, retaken = await self._extend(keys=[k.inflight], args=args)
        return Heartbeat(lost, cancel, retaken)

    async def request_cancel(self, queue: str, job_id: str, ttl_ms: int = 3_600_000) -> None:
        """Tell the worker running ``job_id`` to stop it (see ``cancel.lua``)."""
        k = self.keys(queue)
        await self._cancel(keys=[k.cancel_prefix + job_id], args=[k.cancel, job_id, ttl_ms])

    async def release(
        self, queue: str, claims: Sequence[Claim], pipe: Pipeline | ScriptBatch | None = None
    ) -> None:
        k = self.keys(queue)
        args: list[str] = [k.lease_prefix]
        for c in claims:
            args += (c.id, c.token)
        await self._call(self._release, [k.inflight], args, pipe)

    async def settle(
        self, released: dict[str, list[Claim]], requeued: Sequence[DispatchEntry],
        changed: Iterable[object] = (), started: Sequence[StartedJob] = (),
        lease_ms: int = 0,
    ) -> list[str]:
        """After PostgreSQL recorded outcomes: give the leases back, take those of the
        jobs the flush ``started`` for this worker (see ``adopt.lua``), then index the
        jobs that run again, and tell API processes which jobs ``changed`` (see
        :meth:`publish_changed`). One round trip; releases come first so a retry is not
        mistaken for a running job by enqueue. Returns the started jobs whose lease
        another holder has (their attempt was taken over)."""
        by_queue: dict[str, list[str]] = {}
        for job in started:
            by_queue.setdefault(job.queue, []).extend((str(job.id), job.lease_token))
        batch = self.batch()
        for queue, claims in released.items():
            await self.release(queue, claims, batch)
        for queue, pairs in by_queue.items():
            k = self.keys(queue)
            await batch.script(self._adopt, [k.inflight], [k.lease_prefix, lease_ms, *pairs])
        if requeued:
            await self.enqueue(requeued, batch)
        if changed:
            await self.publish_changed(changed, batch)
        replies = await batch.execute()
        adopted = replies[len(released):len(released) + len(by_queue)]
        return [job_id for lost in adopted for job_id in lost]

    async def publish_changed(
        self, ids: Iterable[object], pipe: Pipeline | ScriptBatch | None = None
    ) -> None:
        """One message on the changed channel naming jobs (or workflows) whose state
        changed, space-separated. A hint only: listeners read PostgreSQL for the state,
        and a lost message costs latency, not correctness (see ``api/watch.py``)."""
        message = " ".join(str(i) for i in ids)
        if message:
            await (self.client if pipe is None else pipe).publish(self.changed_channel, message)

    async def reap(self, queue: str, limit: int = 1000) -> list[Claim]:
        k = self.keys(queue)
        flat = await self._reap(keys=[k.inflight], args=[k.lease_prefix, limit])
        return [Claim(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def lease_holders(self, queue: str, ids: Sequence[str]) -> list[str | None]:
        """Current lease token of each job id (None where no lease exists)."""
        k = self.keys(queue)
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.get(k.lease_prefix + job_id)
            return await pipe.execute()

    async def clock_us(self) -> int:
        """Redis's clock in microseconds (what enqueue.lua and claim.lua stamp)."""
        secs, micros = await self.client.time()
        return secs * 1_000_000 + micros

    async def epoch(self) -> str | None:
        """The generation of the index this Redis holds (see :mod:`taskflow.index`), or
        None when it holds none: new, flushed or restarted empty."""
        value = await self.client.get(self.epoch_key)
        return None if value is None else value.partition("@")[0]

    async def mark_epoch(self, generation: str, *, replace: bool = False) -> bool:
        """Marks this Redis as holding (or, for the caller, rebuilding) the index of
        ``generation``, stamped with Redis's clock; False if another process marked it
        first (``replace``: overwrite a mark of another generation)."""
        secs, micros = await self.client.time()
        value = f"{generation}@{secs + micros / 1e6!r}"
        if replace:
            return bool(await self.client.set(self.epoch_key, value))
        return bool(await self.client.set(self.epoch_key, value, nx=True))

    async def index_age(self) -> float | None:
        """Seconds since the index was marked (see :meth:`mark_epoch`); None if unmarked.
        Running jobs' leases may be missing for a heartbeat after that."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.get(self.epoch_key)
            (secs, micros), value = await pipe.execute()
        if value is None:
            return None
        try:
            return max(0.0, secs + micros / 1e6 - float(value.partition("@")[2]))
        except ValueError:  # a mark without a time: old enough
            return float("inf")

    async def depth(self, queue: str) -> tuple[int, int, int]:
        """(ready, delayed, in flight) counts of a queue."""
        k = self.keys(queue)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(k.ready)
            pipe.zcard(k.delayed)
            pipe.zcard(k.inflight)
            ready, delayed, inflight = await pipe.execute()
        return ready, delayed, inflight

    async def inflight_ids(self, queues: Sequence[str]) -> list[str]:
        """The ids of the jobs in flight in ``queues`` (claimed, lease not yet settled):
        no more than the workers run at once."""
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrange(self.keys(queue).inflight, 0, -1)
            members = await pipe.execute()
        return [m.partition("|")[0] for ms in members for m in ms]

    async def reindex(self, entries: Sequence[DispatchEntry]) -> None:
        """Index jobs that were indexed before (a retry): their old entries and cancel
        markers go, the new entries come (for jobs that are dispatchable now: a blocked
        one waits for its upstreams), in one MULTI/EXEC per queue."""
        by_queue: dict[str, list[DispatchEntry]] = {}
        for e in entries:
            by_queue.setdefault(e.queue, []).append(e)
        for queue, group in by_queue.items():
            k = self.keys(queue)
            args: list[str | int] = [k.cancel_prefix]
            for e in group:
                args += (str(e.id), e.priority)
            ready = [e for e in group if e.state in DISPATCHABLE]
            async with self.client.pipeline(transaction=True) as pipe:
                await self._forget(keys=[k.ready, k.delayed], args=args, client=pipe)
                if ready:
                    await self.enqueue(ready, pipe)
                await pipe.execute()


class WakeListener:
    """Wakes waiting workers when jobs are indexed in any of their queues (pub/sub), so
    idle workers neither poll nor add a polling interval to latency; passes cancellation
    requests to ``on_cancel``."""

    def __init__(
        self, dispatch: RedisDispatch, queues: Sequence[str],
        on_cancel: Callable[[str], None] = lambda job_id: None,
    ) -> None:
        self.dispatch = dispatch
        self.wake_channels = {dispatch.keys(q).wake: q for q in queues}
        self.cancel_channels = {dispatch.keys(q).cancel for q in queues}
        self.on_cancel = on_cancel
        self.event = asyncio.Event()
        # Per queue, Redis's clock (microseconds) at the latest index change heard of
        # (enqueue.lua says when); infinite while not listening, when changes may go
        # unheard.
        self._indexed_at: dict[str, float] = dict.fromkeys(queues, math.inf)
        # The channels whose subscription Redis has not confirmed yet.
        self._unconfirmed: set[str] = set()

    @property
    def listening(self) -> bool:
        """Subscribed: index changes are heard of (but for a message on its way)."""
        return math.inf not in self._indexed_at.values()

    def indexed_since(self, queue: str, at_us: int) -> bool:
        """Whether jobs may have been indexed in ``queue`` since Redis's time ``at_us``
        (as far as this listener has heard: a message still on its way is not counted)."""
        return self._indexed_at.get(queue, math.inf) >= at_us

    async def run(self) -> None:
        """Listen until cancelled. Raises when the connection fails (the supervisor
        restarts it); the event is set then too, so nobody sleeps on a dead listener."""
        pubsub = self.dispatch.client.pubsub()
        self._unconfirmed = {*self.wake_channels, *self.cancel_channels}
        try:
            await pubsub.subscribe(*self.wake_channels, *self.cancel_channels)
            # subscribe() returns once the command is sent: the listener listens from
            # Redis's confirmation of its last channel on (a message published between
            # the two would go unheard).
            async for message in pubsub.listen():
                kind = message["type"]
                if kind == "subscribe":
                    self._unconfirmed.discard(message["channel"])
                    if not self._unconfirmed and not self.listening:
                        # Whatever was published before went unheard: as if indexed now
                        # (Redis's clock, read after the confirmation), so only claims from
                        # now on count as having seen it.
                        now = await self.dispatch.clock_us()
                        self._indexed_at = dict.fromkeys(self._indexed_at, now)
                        self.event.set()  # what was published before it is not lost
                elif kind != "message":
                    continue
                elif message["channel"] in self.cancel_channels:
                    self.on_cancel(message["data"])
                else:
                    queue = self.wake_channels[message["channel"]]
                    at = message["data"].partition("@")[2]
                    if at.isdigit():
                        when = float(at)
                    else:
                        # A message without a time (from an older release): its index
                        # change is no later than Redis's clock now. Not "for ever": that
                        # would hold off flush starts until the listener reconnects.
                        # Meanwhile, as if indexed just now.
                        before = self._indexed_at[queue]
                        self._indexed_at[queue] = math.inf
                        self.event.set()
                        when = await self.dispatch.clock_us()
                        self._indexed_at[queue] = before
                    self._indexed_at[queue] = max(self._indexed_at[queue], when)
                    self.event.set()
        finally:
            self._indexed_at = dict.fromkeys(self._indexed_at, math.inf)
            self.event.set()
            await pubsub.aclose()
