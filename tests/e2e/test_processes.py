"""``taskflow work --processes N`` and ``taskflow serve --workers N`` as real processes:
the children share the work, a killed child is restarted and loses no job, SIGTERM
stops them all gracefully, and the role's one metrics page is their sum."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskflow.adapters.embedded import free_port
from taskflow.processes import merge
from taskflow.processes.pages import fetch_page, socket_path
from taskflow.states import JobState
from tests.e2e.api_stack import start_api, stop
from tests.e2e.processes import Role
from tests.helpers import submit_jobs, wait_for_states, wait_until

_STARTED = re.compile(r"(\w+) process (\d+) started \(pid (\d+)\)")


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="taskflow-procs-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def child_pids(role: Role) -> dict[int, int]:
    """The latest pid of each slot, from the supervisor's log."""
    return {int(slot): int(pid) for _, slot, pid in _STARTED.findall(role.output())}


def child_dir(pid: int) -> str:
    """The supervisor's private folder, from a child's command line."""
    with open(f"/proc/{pid}/cmdline") as cmdline:
        args = cmdline.read().split("\0")
    return args[args.index("--child-dir") + 1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent's successor) is not running.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.text()


def sample(page: str, family: str, key: str) -> float | None:
    found = merge.parse(page).get(family)
    return None if found is None else found.samples.get(key)


def check_exposition(page: str) -> None:
    """The page parses as Prometheus text (and passes promtool where it is installed)."""
    list(text_string_to_metric_families(page))
    if shutil.which("promtool"):
        import subprocess

        lint = subprocess.run(["promtool", "check", "metrics"], input=page, text=True,
                              capture_output=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


class Workers:
    """``taskflow work --processes N`` with its metrics port."""

    def __init__(self, servers, folder: Path, processes: int, *args: str,
                 **settings: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.role = Role(servers, ["work", "--processes", str(processes), *args],
                         folder / "workers.log", TASKFLOW_WORKER__METRICS_PORT=str(self.port),
                         **settings)

    async def readyz(self) -> tuple[int, str] | None:
        """Status and body of /readyz, None while the port does not answer."""
        try:
            return await get(f"{self.base}/readyz")
        except aiohttp.ClientError:
            return None

    async def ready(self, timeout: float = 30) -> str:
        async def check():
            answer = await self.readyz()
            return answer[1] if answer and answer[0] == 200 else None
        return await wait_until(check, timeout=timeout, interval=0.1)

    async def metrics(self) -> str:
        status, page = await get(f"{self.base}/metrics")
        assert status == 200, page
        return page

    def stop(self) -> None:
        """Kill the supervisor and any child it left (a failing test's cleanup)."""
        pids = child_pids(self.role)
        self.role.stop()
        print(self.role.output())  # shown when the test fails
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


SUCCEEDED = 'taskflow_jobs_finished_total{outcome="succeeded",queue="default",task="sleep"}'


async def test_processes_share_the_work_and_serve_one_summed_page(stores, servers, folder):
    workers = Workers(servers, folder, 2, "--concurrency", "3")
    try:
        body = await workers.ready()
        assert '"processes": "ok"' in body and '"postgres": "ok"' in body
        ids = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 0.1}}
                                          for _ in range(24)])
        await wait_for_states(stores, ids, {"succeeded"}, timeout=30)
        ran_by = {a.worker for i in ids for a in await stores.store.job_attempts(i)}
        assert len(ran_by) == 2, ran_by  # both processes claimed from the one batch

        async def counted():
            page = await workers.metrics()
            return page if sample(page, "taskflow_jobs_finished_total", SUCCEEDED) == 24 \
                else None
        page = await wait_until(counted, timeout=10)
        check_exposition(page)
        assert sample(page, "taskflow_worker_concurrency_slots",
                      "taskflow_worker_concurrency_slots") == 6
        assert sample(page, "taskflow_supervised_processes",
                      "taskflow_supervised_processes") == 2
        assert sample(page, "taskflow_queue_jobs",
                      'taskflow_queue_jobs{queue="default",state="ready"}') is not None
        pids = child_pids(workers.role)
        assert len(pids) == 2
        workers.role.signal(signal.SIGTERM)
        assert workers.role.wait(timeout=30) == 0, workers.role.output()
        assert not any(alive(pid) for pid in pids.values())
    finally:
        workers.stop()


async def test_a_killed_child_is_restarted_and_its_jobs_complete_once(
        stores, servers, folder):
    workers = Workers(servers, folder, 2, "--concurrency", "4")
    try:
        await workers.ready()
        ids = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 1.0}}
                                          for _ in range(8)])
        running = await wait_for_states(stores, ids, {"running"}, timeout=20)
        victim_name = running[0].worker
        victim = int(victim_name.split(":")[1])
        assert victim in child_pids(workers.role).values()
        os.kill(victim, signal.SIGKILL)

        async def restarted():
            pids = child_pids(workers.role)
            return pids if victim not in pids.values() and len(pids) == 2 else None
        await wait_until(restarted, timeout=20)
        await wait_for_states(stores, ids, {"succeeded"}, timeout=30)
        for job_id in ids:
            outcomes = [a.outcome for a in await stores.store.job_attempts(job_id)]
            assert outcomes.count("succeeded") == 1, outcomes
        body = await workers.ready()  # ready again: both up
        assert '"processes": "ok"' in body
        page = await workers.metrics()
        assert sample(page, "taskflow_process_restarts_total",
                      "taskflow_process_restarts_total") == 1
        assert "restarting it in" in workers.role.output()
        workers.role.signal(signal.SIGTERM)
        assert workers.role.wait(timeout=30) == 0, workers.role.output()
    finally:
        workers.stop()


async def test_sigterm_finishes_short_jobs_and_hands_long_ones_back(stores, servers, folder):
    workers = Workers(servers, folder, 2, "--concurrency", "4",
                      TASKFLOW_WORKER__SHUTDOWN_GRACE="1.0")
    try:
        await workers.ready()
        short = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 0.3}}
                                            for _ in range(4)])
        long = await submit_jobs(stores, *[{"task": "sleep", "payload": {"seconds": 5}}
                                           for _ in range(4)])
        await wait_for_states(stores, short + long, {"running"}, timeout=20)
        pids = child_pids(workers.role)
        workers.role.signal(signal.SIGTERM)
        assert workers.role.wait(timeout=20) == 0, workers.role.output()
        assert not any(alive(pid) for pid in pids.values())
    finally:
        workers.stop()
    assert {j.state for j in await stores.store.get_jobs(short)} == {JobState.SUCCEEDED}
    handed = await stores.store.get_jobs(long)
    assert {j.state for j in handed} == {JobState.QUEUED}
    assert all(j.attempts == 0 for j in handed)


async def test_children_stop_when_the_supervisor_is_killed(stores, servers, folder):
    workers = Workers(servers, folder, 2)
    pages = ""
    try:
        await workers.ready()
        pids = list(child_pids(workers.role).values())
        pages = child_dir(pids[0])  # a supervisor killed so cannot remove it
        workers.role.signal(signal.SIGKILL)
        workers.role.wait()

        async def gone():
            return not any(alive(pid) for pid in pids)
        await wait_until(gone, timeout=20)
    finally:
        workers.stop()
        shutil.rmtree(pages, ignore_errors=True)


async def test_readyz_counts_the_children_up(stores, servers, folder):
    # Children that cannot start (a handler module that does not import) never come up.
    workers = Workers(servers, folder, 2, TASKFLOW_WORKER__HANDLER_MODULES='["nowhere.at.all"]')
    try:
        status, body = await wait_until(workers.readyz, timeout=20)
        assert status == 503 and '"processes": "0 of 2 up"' in body, body

        async def restarting():
            return "restarting it in" in workers.role.output()
        await wait_until(restarting, timeout=20)
        workers.role.signal(signal.SIGTERM)
        workers.role.wait(timeout=20)
    finally:
        workers.stop()


async def test_api_processes_share_the_port_and_sum_their_pages(migrated, servers, folder):
    api, url = await start_api(servers, folder / "api.log", "--workers", "2",
                               TASKFLOW_JWT_SECRET="x" * 40)
    try:
        async def both_started():
            return len(child_pids(api)) == 2
        await wait_until(both_started, timeout=20)
        pids = child_pids(api)
        pages = child_dir(pids[0])  # where each serves its own page

        async def both_up():
            return all(os.path.exists(socket_path(pages, slot)) for slot in (0, 1))
        await wait_until(both_up, timeout=20)

        async def one() -> int:
            connector = aiohttp.TCPConnector(force_close=True)  # a connection each
            async with aiohttp.ClientSession(connector=connector) as http:
                async with http.get(url + "/healthz") as resp:
                    return resp.status

        key = ('taskflow_api_request_duration_seconds_count{method="GET",route="/healthz",'
               'status="2xx"}')

        async def served_by_each() -> list[float]:
            """Each process's own count of /healthz requests, from its own page."""
            counts = []
            for slot in (0, 1):
                own = (await fetch_page(socket_path(pages, slot), 5)).decode()
                counts.append(sample(own, "taskflow_api_request_duration_seconds", key) or 0)
            return counts

        # Bursts of new connections until both processes have accepted some (which one
        # accepts is the kernel's choice).
        for _ in range(20):
            assert set(await asyncio.gather(*(one() for _ in range(50)))) == {200}
            served = await served_by_each()
            if all(served):
                break
        assert all(served), served
        status, page = await get(url + "/metrics")
        assert status == 200
        check_exposition(page)
        assert sample(page, "taskflow_api_request_duration_seconds", key) == sum(served)
        assert sample(page, "taskflow_supervised_processes",
                      "taskflow_supervised_processes") == 2
    finally:
        codes = stop(api)
    assert codes == [0], api.output()
    assert not any(alive(pid) for pid in pids.values())
