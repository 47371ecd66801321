"""RedisDispatch.settle, the Redis side of every outcome flush: one round trip (no SCRIPT
EXISTS before it), and whole when Redis has lost its scripts. Against a Redis of the
test's own (its command statistics count only this test's commands)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from taskflow.adapters.embedded import EmbeddedRedis
from taskflow.adapters.redis import RedisDispatch
from taskflow.models import Claim, DispatchEntry, StartedJob
from taskflow.states import JobState


@pytest.fixture
async def dispatch(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    dispatch = RedisDispatch.from_url(server.url, prefix="t")
    try:
        yield dispatch
    finally:
        await dispatch.close()
        server.stop()


def _entry() -> DispatchEntry:
    return DispatchEntry(uuid.uuid4(), "default", 0, datetime.now(UTC), JobState.QUEUED)


def _started(token: str) -> StartedJob:
    return StartedJob(uuid.uuid4(), "noop", "default", "{}", 0, 1, 1, None, None, token,
                      "t", 1)


async def _script_commands(dispatch: RedisDispatch) -> int:
    """SCRIPT EXISTS / LOAD / ... calls so far (Redis 7 counts them per subcommand,
    Redis 6 as one command)."""
    stats = await dispatch.client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_script"))


async def _settle_once(dispatch: RedisDispatch) -> None:
    """Claim a job, settle its outcome beside a retry and a started dependent, and check
    every part of the settle took effect."""
    await dispatch.enqueue([_entry()])
    [claim] = (await dispatch.claim("default", 1, 60_000)).claims
    retry, started = _entry(), _started("p.1")
    k = dispatch.keys("default")
    async with dispatch.client.pubsub() as pubsub:
        await pubsub.subscribe(dispatch.changed_channel)
        await pubsub.get_message(timeout=1)  # the confirmation
        taken = await dispatch.settle({"default": [claim]}, [retry], [claim.id], [started],
                                      60_000)
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert taken == []
    assert await dispatch.lease_holders("default", [claim.id, str(started.id)]) == [
        None, "p.1"]
    assert await dispatch.client.zscore(k.ready, str(retry.id)) is not None
    assert message is not None and message["data"] == claim.id


async def test_a_settle_sends_no_script_command_once_redis_has_the_scripts(dispatch):
    await _settle_once(dispatch)  # a fresh Redis: the scripts get loaded on the way
    before = await _script_commands(dispatch)
    for _ in range(5):
        await _settle_once(dispatch)
    assert await _script_commands(dispatch) == before


async def test_a_settle_after_redis_lost_its_scripts_does_all_of_its_work(dispatch):
    await _settle_once(dispatch)
    await dispatch.client.script_flush()
    await _settle_once(dispatch)


async def test_a_settle_still_raises_what_redis_refuses(dispatch):
    """An error other than NOSCRIPT is raised, as by a pipeline; the rest of the batch
    ran (the batch is not a transaction)."""
    k = dispatch.keys("default")
    await dispatch.client.set(k.inflight, "not a sorted set")
    claim = Claim(str(uuid.uuid4()), "x.1")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await dispatch.settle({"default": [claim]}, [_entry()], [claim.id], [], 60_000)
    assert await dispatch.client.zcard(k.ready) == 1


async def test_a_call_that_ran_ahead_of_a_refused_one_runs_again_after_it(dispatch):
    """Redis lost its scripts and had the enqueue script loaded back (by another client)
    before the settle ran: its release is refused, and its enqueue of the retried job
    runs while the job's lease is still held, so it indexes nothing. Run again after the
    release, it indexes the retry."""
    await _settle_once(dispatch)
    await dispatch.enqueue([_entry()])
    [claim] = (await dispatch.claim("default", 1, 60_000)).claims
    retry = DispatchEntry(uuid.UUID(claim.id), "default", 0, datetime.now(UTC),
                          JobState.QUEUED)
    await dispatch.client.script_flush()
    await dispatch.client.script_load(dispatch._enqueue.script)
    await dispatch.settle({"default": [claim]}, [retry], [claim.id], [], 60_000)
    assert await dispatch.lease_holders("default", [claim.id]) == [None]
    assert await dispatch.client.zscore(dispatch.keys("default").ready, claim.id) is not None
