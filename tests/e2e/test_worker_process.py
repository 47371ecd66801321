"""The worker as a real process: crashes and graceful shutdown lose no job."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

from taskflow.states import JobState
from tests.e2e.processes import Role
from tests.helpers import submit_jobs, wait_for_states, wait_until


async def test_sigkill_mid_job_runs_it_again_elsewhere_with_one_success(
        stores, servers, tmp_path):
    [job_id] = await submit_jobs(stores, {"task": "sleep", "payload": {"seconds": 1.5}})
    first = Role(servers, ["work", "--concurrency", "4"], tmp_path / "first.log")
    try:
        async def running():
            job = await stores.store.get_job(job_id)
            return job.state is JobState.RUNNING
        await wait_until(running, timeout=20)
        first.signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    finally:
        first.stop()
    second = Role(servers, ["work"], tmp_path / "second.log")
    try:
        [job] = await wait_for_states(stores, [job_id], {"succeeded"}, timeout=30)
    finally:
        second.signal(signal.SIGTERM)
        second.wait()
    attempts = await stores.store.job_attempts(job_id)
    assert [a.outcome for a in attempts] == ["lost", "succeeded"]
    assert attempts[0].worker != attempts[1].worker
    assert job.attempts == 2 and job.result == {"slept": 1.5}


async def test_sigterm_lets_short_jobs_finish_and_hands_long_ones_back(
        stores, servers, tmp_path):
    short = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 0.5}}
                                        for _ in range(3)])
    long = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 4}}
                                       for _ in range(2)])
    worker = Role(servers, ["work", "--concurrency", "10"], tmp_path / "worker.log",
                  TASKFLOW_WORKER__SHUTDOWN_GRACE="1.5")
    try:
        await wait_for_states(stores, short + long, {"running"}, timeout=20)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, worker.output()
    finally:
        worker.stop()
    # Short jobs finished within the grace period; long ones were handed back at once.
    done = await stores.store.get_jobs(short)
    assert {j.state for j in done} == {JobState.SUCCEEDED}
    handed = await stores.store.get_jobs(long)
    assert {j.state for j in handed} == {JobState.QUEUED}
    assert all(j.attempts == 0 for j in handed)  # a hand-back spends no attempt
    assert await stores.dispatch.depth("default") == (2, 0, 0)  # and they are indexed
    # Another worker runs them; nothing was lost.
    other = Role(servers, ["work"], tmp_path / "other.log")
    try:
        jobs = await wait_for_states(stores, long, {"succeeded"}, timeout=30)
    finally:
        other.signal(signal.SIGTERM)
        other.wait()
    assert all(j.attempts == 1 for j in jobs)
    for job_id in long:
        outcomes = [a.outcome for a in await stores.store.job_attempts(job_id)]
        assert outcomes == ["handed_back", "succeeded"]


async def test_worker_exposes_prometheus_metrics(stores, servers, tmp_path):
    import aiohttp

    from taskflow.adapters.embedded import free_port

    port = free_port()
    ids = await submit_jobs(stores, {"task": "noop"}, {"task": "fail", "max_attempts": 1})
    worker = Role(servers, ["work"], tmp_path / "worker.log",
                  TASKFLOW_WORKER__METRICS_PORT=str(port))
    try:
        await wait_for_states(stores, ids, {"succeeded", "failed"}, timeout=20)

        async def scrape():
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
            return text if 'outcome="failed"' in text else None

        text = await wait_until(scrape, timeout=10)
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait()
    assert 'taskflow_jobs_finished_total{outcome="succeeded",queue="default",task="noop"} 1.0' in text
    assert 'taskflow_jobs_finished_total{outcome="failed",queue="default",task="fail"} 1.0' in text
    assert 'taskflow_queue_jobs{queue="default",state="ready"}' in text


async def test_worker_runs_handlers_from_configured_modules_on_several_queues(
        stores, servers, tmp_path):
    ids = await submit_jobs(
        stores,
        {"task": "sample.add", "payload": {"a": 2, "b": 3}, "queue": "math"},
        {"task": "sample.sync_upper", "payload": {"text": "hi"}, "queue": "text"},
        {"task": "sample.retry_later", "queue": "math"},
        {"task": "noop", "queue": "unserved"},
    )
    worker = Role(servers, ["work", "-q", "math", "-q", "text"], tmp_path / "worker.log",
                  TASKFLOW_WORKER__HANDLER_MODULES='["tests.e2e.sample_handlers"]',
                  TASKFLOW_QUEUES='["default", "math", "text", "unserved"]')
    try:
        jobs = await wait_for_states(stores, ids[:3], {"succeeded"}, timeout=20)
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait()
    assert [j.result for j in sorted(jobs, key=lambda j: j.id)] == [5, "HI", 2]
    retry_attempts = await stores.store.job_attempts(ids[2])
    assert [a.outcome for a in retry_attempts] == ["retried", "succeeded"]
    assert "not yet" in retry_attempts[0].error
    unserved = await stores.store.get_job(ids[3])
    assert unserved.state is JobState.QUEUED  # nobody serves that queue


async def test_worker_with_a_bad_setting_fails_fast_naming_it(servers, tmp_path):
    worker = Role(servers, ["work"], tmp_path / "worker.log",
                  TASKFLOW_WORKER__CONCURRENCY="zero")
    assert worker.wait(timeout=30) != 0
    assert "invalid setting 'worker.concurrency'" in worker.output()


async def test_worker_refuses_to_serve_an_undeclared_queue(servers, tmp_path):
    worker = Role(servers, ["work", "-q", "default", "-q", "nowhere"], tmp_path / "worker.log")
    assert worker.wait(timeout=30) != 0
    assert "invalid setting '--queue': 'nowhere' is not a declared queue" in worker.output()


async def test_a_poison_job_stops_at_its_own_attempts_and_spares_the_others(
        stores, servers, tmp_path):
    # Issue 10, item 7: a job that kills its worker every time. A supervisor (here, the
    # test) restarts the worker each time; the poison job ends failed after its own
    # max_attempts of lost attempts, and the jobs that ran beside it all succeed.
    [poison] = await submit_jobs(stores, {"task": "sample.crash", "max_attempts": 2})
    others = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 0.3},
                                          "max_attempts": 3} for _ in range(20)])
    env = {"TASKFLOW_WORKER__HANDLER_MODULES": '["tests.e2e.sample_handlers"]'}
    crashes = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        worker = Role(servers, ["work", "-c", "30"], tmp_path / f"w{crashes}.log", **env)
        try:
            async def settled() -> bool:
                jobs = await stores.store.get_jobs([poison, *others])
                return all(j.state.value in ("succeeded", "failed") for j in jobs)

            while worker.process.poll() is None and not await settled():
                await asyncio.sleep(0.1)
            if worker.process.poll() is not None:
                assert worker.process.returncode == -signal.SIGKILL, worker.output()
                crashes += 1
                continue
            break
        finally:
            worker.signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.stop()
    [job] = await stores.store.get_jobs([poison])
    assert job.state is JobState.FAILED and job.attempts == 2, job
    assert [a.outcome for a in await stores.store.job_attempts(poison)] == ["lost", "lost"]
    assert crashes == 2
    done = await stores.store.get_jobs(others)
    assert {j.state for j in done} == {JobState.SUCCEEDED}
    assert max(j.attempts for j in done) <= 3


async def test_sigterm_during_a_busy_drain_leaves_no_job_running(stores, servers, tmp_path):
    # SIGTERM used to cancel the claimer wherever it was, also inside start_jobs: a batch
    # PostgreSQL had just moved to running was neither run nor handed back, and was
    # rescued a lease later, a lost attempt charged to every job of it.
    for _ in range(4):
        await submit_jobs(stores, *[{"task": "noop"} for _ in range(5000)])
    worker = Role(servers, ["work", "-c", "500"], tmp_path / "worker.log",
                  TASKFLOW_WORKER__CLAIM_BATCH="500", TASKFLOW_WORKER__LEASE_TTL="30",
                  TASKFLOW_WORKER__HEARTBEAT_INTERVAL="10")
    try:
        async def busy() -> bool:
            return await stores.store.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE state = 'succeeded'") >= 2000
        await wait_until(busy, timeout=60)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.output()
    finally:
        worker.stop()
    states = dict(await stores.store.pool.fetch(
        "SELECT state::text, count(*) FROM jobs GROUP BY state"))
    assert "running" not in states, states
    lost = await stores.store.pool.fetchval(
        "SELECT count(*) FROM job_attempts WHERE outcome = 'lost'")
    assert lost == 0
