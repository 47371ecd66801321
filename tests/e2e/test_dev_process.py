"""``taskflow dev``: one command, embedded PostgreSQL and Redis, API and worker. Its
banner's commands work as printed, Ctrl-C stops everything, and data survives."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.api_stack import TERMINAL, Client

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: embedded PostgreSQL runs as its own user, which must
    # be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="taskflow-dev-e2e-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Dev:
    """``taskflow dev`` in its own process group, as a terminal would run it."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        # As `make dev` runs it: no TASKFLOW_ENV, no secret (`dev` means development).
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        env.update(TASKFLOW_DATA_DIR=str(data_dir / "data"), TASKFLOW_LOG_LEVEL="INFO")
        self.log_path = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskflow.cli", "dev", "--port", "0"], env=env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def banner(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops everything" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"taskflow dev did not start:\n{self.output()}")
            await asyncio.sleep(0.1)
        return self.output()

    def ctrl_c(self, timeout: float = 40) -> int:
        os.killpg(self.process.pid, signal.SIGINT)  # the terminal's whole foreground group
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


def _postmaster_running(data_dir: Path) -> bool:
    return any(data_dir.rglob("postmaster.pid"))


async def test_dev_runs_everything_prints_working_commands_and_stops_on_ctrl_c(
        data_dir: Path, tmp_path: Path):
    dev = Dev(data_dir, tmp_path / "dev1.log")
    try:
        banner = await dev.banner()
        url = re.search(r"API (http://\S+)", banner).group(1)
        token = re.search(r"^TOKEN=(\S+)$", banner, re.MULTILINE).group(1)
        commands = [line for line in banner.splitlines()
                    if line.startswith(("ID=", "curl "))]
        assert len(commands) == 2
        # The two commands, pasted into a shell: submit, then read the job back.
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", "set -e\n" + "\n".join(commands),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await shell.communicate()
        assert shell.returncode == 0, err.decode()
        import json

        job = json.loads(out)
        assert job["task"] == "echo" and job["payload"] == {"hello": "world"}
        async with aiohttp.ClientSession() as http:
            client = Client(http, url, token)
            done = await client.wait_state(job["id"], TERMINAL)
            assert done["state"] == "succeeded" and done["result"] == {"hello": "world"}
            # One page for all roles: the API's, the worker's and the queue gauges.
            async with http.get(url + "/metrics") as resp:
                page = await resp.read()
            for name in (b"taskflow_api_request_duration_seconds_count{",
                         b'taskflow_jobs_finished_total{outcome="succeeded",queue="default"',
                         b"taskflow_worker_concurrency_slots ",
                         b'taskflow_queue_jobs{queue="default",state="ready"}'):
                assert name in page, name
            # The console's sign-in link: the same token, in the fragment only; the page
            # it opens is served by this process.
            assert f"{url}/ui/#token={token}" in banner.splitlines()
            async with http.get(url + "/ui/") as resp:
                assert resp.status == 200 and "text/html" in resp.headers["content-type"]
            if shutil.which("promtool"):
                lint = subprocess.run(["promtool", "check", "metrics"], input=page,
                                      capture_output=True, timeout=30)
                assert lint.stdout + lint.stderr == b""
        assert _postmaster_running(data_dir)
        redis_port = int(re.search(r"Redis redis://127.0.0.1:(\d+)", banner).group(1))
        assert dev.ctrl_c() == 0, dev.output()
    except BaseException:
        dev.kill()
        raise
    # Everything stopped, embedded servers included.
    assert not _postmaster_running(data_dir), dev.output()
    with pytest.raises(OSError):
        socket_probe(redis_port)

    # Started again on the same data folder: the job and the dev secret are still there.
    again = Dev(data_dir, tmp_path / "dev2.log")
    try:
        banner = await again.banner()
        url = re.search(r"API (http://\S+)", banner).group(1)
        async with aiohttp.ClientSession() as http:
            old_token = Client(http, url, token)
            kept = await old_token.get(f"/tasks/{job['id']}")
            assert kept.status == 200 and kept.body["state"] == "succeeded"
        assert again.ctrl_c() == 0, again.output()
    except BaseException:
        again.kill()
        raise


def socket_probe(port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
