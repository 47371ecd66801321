"""What the metrics read from the stores (taskflow.adapters.observe, taskflow.stats),
against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

from taskflow import metrics
from taskflow.adapters.observe import FORGET_AFTER_MS, Observer
from taskflow.models import DispatchEntry
from taskflow.states import JobState
from taskflow.stats import ClusterStats


def _entry(priority: int, seconds_ago: float, state: JobState = JobState.QUEUED
           ) -> DispatchEntry:
    run_at = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return DispatchEntry(uuid.uuid4(), "q", priority, run_at, state)


async def test_queue_sizes_find_the_oldest_ready_job_across_priority_bands(stores):
    observer = Observer(stores.dispatch, stores.store.pool)
    assert (await observer.queue_sizes(["q"]))["q"].oldest_ready_due_ms is None
    # The head of the ready set is the highest priority, not the oldest job.
    entries = [_entry(10, 1), _entry(10, 2), _entry(0, 30), _entry(-5, 7), _entry(0, 3)]
    await stores.dispatch.enqueue(entries)
    await stores.dispatch.enqueue([_entry(0, -3600, JobState.SCHEDULED),
                                   _entry(0, -0.05, JobState.SCHEDULED)])
    await asyncio.sleep(0.1)  # the second delayed job is due now, but not promoted
    sizes = (await observer.queue_sizes(["q"]))["q"]
    assert (sizes.ready, sizes.scheduled, sizes.running) == (6, 1, 0)
    age = (sizes.now_ms - sizes.oldest_ready_due_ms) / 1000
    assert 29.5 < age < 31
    claimed = await stores.dispatch.claim("q", 2, 30_000)
    sizes = (await observer.queue_sizes(["q"]))["q"]
    assert (sizes.ready, sizes.scheduled, sizes.running) == (4, 1, 2)
    assert len(claimed.claims) == 2


async def test_presence_counts_live_workers_and_forgets_long_dead_ones(stores):
    observer = Observer(stores.dispatch)
    await observer.heartbeat("w1", ["q", "other"], ttl=30)
    await observer.heartbeat("w2", ["q"], ttl=-1)  # its deadline has passed: not alive
    dead_ms = int(time.time() * 1000) - FORGET_AFTER_MS - 1000
    await stores.dispatch.client.hset(observer.presence_key, "w3", f"{dead_ms} q")
    live = await observer.live_workers()
    assert [(w.name, w.queues) for w in live] == [("w1", ("q", "other"))]
    assert set(await stores.dispatch.client.hkeys(observer.presence_key)) == {"w1", "w2"}
    await observer.leave("w1")
    assert await observer.live_workers() == []


async def test_the_gauges_render_from_a_snapshot_with_blocked_jobs_and_workers(stores):
    from taskflow.jobs import submit
    from taskflow.models import NewJob

    upstream = NewJob(task="noop", max_attempts=1, queue="q", delay=3600)
    await submit(stores.store, stores.dispatch, [upstream])
    await submit(stores.store, stores.dispatch, [
        NewJob(task="noop", max_attempts=1, queue="q", depends_on=(upstream.id,))])
    observer = Observer(stores.dispatch, stores.store.pool)
    await observer.heartbeat("w1", ["q"], ttl=30)
    stats = ClusterStats()
    assert stats.render() == ""  # nothing read yet: nothing claimed
    await stats.refresh(observer, ["q", "empty"])
    text = stats.render()
    assert 'taskflow_queue_jobs{queue="q",state="blocked"} 1.0' in text
    assert 'taskflow_queue_jobs{queue="q",state="scheduled"} 1.0' in text
    assert 'taskflow_queue_jobs{queue="empty",state="ready"} 0.0' in text
    assert 'taskflow_queue_oldest_ready_age_seconds{queue="empty"} 0.0' in text
    assert 'taskflow_queue_workers{queue="q"} 1.0' in text
    assert 'taskflow_queue_workers{queue="empty"} 0.0' in text
    assert "taskflow_workers_alive 1.0" in text
    assert metrics.LABEL_CAP("queue", "q") == "q"
