"""Run taskflow CLI roles as real processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import TestServers


def role_env(servers: TestServers, **settings: str | None) -> dict[str, str]:
    """The environment of a role: the test servers, short intervals, and ``settings``
    (a None value removes that variable, e.g. ``TASKFLOW_ENV=None``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
    env.update({
        "TASKFLOW_ENV": "test",
        "TASKFLOW_DATABASE_URL": servers.database_url,
        "TASKFLOW_REDIS_URL": servers.redis_url,
        "TASKFLOW_DATA_DIR": str(servers.data_dir),
        "TASKFLOW_LOG_LEVEL": "INFO",
        "TASKFLOW_WORKER__LEASE_TTL": "2.0",
        "TASKFLOW_WORKER__HEARTBEAT_INTERVAL": "0.5",
        "TASKFLOW_MAINTENANCE__REAPER_INTERVAL": "0.2",
        "TASKFLOW_MAINTENANCE__RECONCILE_INTERVAL": "1.0",
        "TASKFLOW_WORKER__METRICS_PORT": "0",
    })
    env.update({k: v for k, v in settings.items() if v is not None})
    for key in [k for k, v in settings.items() if v is None]:
        env.pop(key, None)
    return env


class Role:
    """A ``taskflow <role>`` process whose output goes to a log file."""

    def __init__(self, servers: TestServers, args: list[str], log: Path,
                 **settings: str | None) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskflow.cli", *args],
            env=role_env(servers, **settings), stdout=self._log, stderr=subprocess.STDOUT,
        )

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
        self.wait()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
