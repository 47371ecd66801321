"""The API role in a chaos run: ``taskflow serve`` as a process and a client that keeps
submitting jobs through it while the faults strike. Each job has an idempotency key and
a failed submit (a 503, a dropped connection) is repeated with the same key until it is
answered 200 or 201, as a careful client would: so the run ends with exactly one job per
key, or the API created a duplicate."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from tests.chaos.servers import ChaosServers
from tests.chaos.workload import QUEUES, QUEUES_SETTING
from tests.e2e.api_stack import AUDIENCE, ISSUER, SECRET, start_api, token
from tests.e2e.processes import Role

API_SETTINGS = {
    "TASKFLOW_QUEUES": QUEUES_SETTING,
    "TASKFLOW_JWT_SECRET": SECRET,
    "TASKFLOW_AUTH__ISSUER": ISSUER,
    "TASKFLOW_AUTH__AUDIENCE": AUDIENCE,
    "TASKFLOW_API__BACKEND_TIMEOUT": "3",
}


class ApiClient:
    """Submits one job every ``interval`` seconds until stopped; counts what happened."""

    def __init__(self, servers: ChaosServers, log_dir: Path, tenant: str, attempts: int,
                 ttl: float) -> None:
        self.servers = servers
        self.log_dir = log_dir
        self.tenant = tenant
        self.attempts = attempts  # max_attempts of its jobs
        self.bearer = token(tenant, ttl=ttl)
        self.role: Role | None = None
        self.url = ""
        self.started = 0
        self.keys = 0  # idempotency keys used (each must end up as exactly one job)
        self.accepted = 0  # keys answered 200/201
        self.refusals: dict[str, int] = {}  # answers that were not 200/201, by status
        self.longest_outage = 0.0  # seconds without an accepted submit
        self.exits: list[str] = []  # API processes that exited by themselves
        self.errors: list[str] = []  # answers other than 2xx and 503, with their bodies
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        self.started += 1
        self.role, self.url = await start_api(
            self.servers, self.log_dir / f"api-{self.started}.log", **API_SETTINGS)

    async def run(self, stop: asyncio.Event, interval: float = 0.2) -> None:
        self.stopping = stop
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while not stop.is_set():
                await self.submit_one(http, deadline=None)
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass

    async def submit_one(self, http: aiohttp.ClientSession, deadline: float | None) -> bool:
        """One new key, repeated until accepted (or ``deadline``, monotonic, passes)."""
        key = f"api-{self.keys}"
        self.keys += 1
        body = {"task": "noop", "idempotency_key": key, "max_attempts": self.attempts,
                "queue": QUEUES[self.keys % len(QUEUES)],
                "labels": {"kind": "api", "expect": "succeeded"}}
        began = time.monotonic()
        while True:
            status = await self._post(http, body)
            if status in (200, 201):
                self.accepted += 1
                self.longest_outage = max(self.longest_outage, time.monotonic() - began)
                return True
            self.refusals[str(status)] = self.refusals.get(str(status), 0) + 1
            if deadline is None and self.stopping.is_set():
                deadline = time.monotonic() + 30  # the run is over: keep trying a while
            if deadline is not None and time.monotonic() > deadline:
                return False
            await self._restart_if_dead()
            await asyncio.sleep(0.2)

    async def _post(self, http: aiohttp.ClientSession, body: dict) -> int | str:
        try:
            async with http.post(f"{self.url}/tasks", json=body,
                                 headers={"Authorization": f"Bearer {self.bearer}"}) as resp:
                text = (await resp.read()).decode("utf-8", "replace")
                if resp.status not in (200, 201, 503):
                    when = datetime.now(timezone.utc).strftime("%H:%M:%S.%f")[:-3]
                    self.errors.append(f"{when} UTC POST /tasks ({body['idempotency_key']}) "
                                       f"answered {resp.status}: {text[:300]} (API log: "
                                       f"{self.role.log_path if self.role else '?'})")
                return resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return type(exc).__name__

    async def _restart_if_dead(self) -> None:
        if self.role is None or self.role.process.poll() is None:
            return
        tail = "\n".join(self.role.output().splitlines()[-15:])
        self.exits.append(f"API pid {self.role.process.pid} exited by itself with "
                          f"{self.role.process.returncode}; its log ends:\n{tail}")
        self.role.wait()
        try:
            await self.start()
        except AssertionError as exc:  # it did not start: try again on the next submit
            self.exits.append(f"the API did not start again: {exc}")

    async def finish(self, timeout: float = 30.0) -> list[str]:
        """The API must still take a submit once the faults are over."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            if await self.submit_one(http, deadline=time.monotonic() + timeout):
                return []
        return [f"the API took no submit for {timeout}s after the faults ended "
                f"(answers: {self.refusals})"]

    def stop(self) -> list[str]:
        """SIGTERM; an API that does not exit 0 is reported."""
        if self.role is None:
            return []
        if self.role.process.poll() is None:
            self.role.signal(signal.SIGTERM)
        try:
            code = self.role.wait(timeout=20)
        except Exception:
            self.role.stop()
            code = "killed after 20 s"
        if code == 0:
            return []
        tail = "\n".join(self.role.output().splitlines()[-15:])
        return [f"API pid {self.role.process.pid} ended with {code} at SIGTERM:\n{tail}"]

    def kill(self) -> None:
        if self.role is not None:
            self.role.stop()
