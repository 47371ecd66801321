"""One chaos run: servers of its own, two ``taskflow work`` processes, the workload, a
seeded sequence of faults (each waits for the system to recover from the last one),
then the drain and the checks. Everything it starts is stopped when it ends."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis.asyncio as aioredis
from msgspec import Struct

from taskflow.config import settings_from_dict
from taskflow.jobs import submit
from taskflow.runtime import Stores, open_stores
from taskflow.supervise import cancel_and_wait
from tests.chaos import checks
from tests.chaos.api import ApiClient
from tests.chaos.observe import TRANSIENT, Probe, Recovery, retrying
from tests.chaos.report import Fault, Report, figures, left_unfinished, wrongly_lost
from tests.chaos.servers import ChaosServers
from tests.chaos.workload import (
    QUEUES, QUEUES_SETTING, TENANT, Plan, Workload, bait, submit_workload,
)
from tests.e2e.processes import Role

log = logging.getLogger("chaos")

# One round of faults: every kind once and a second kill, shuffled per round; repeated for
# longer runs, so even a short run sees every kind.
ROUND = ("kill", "flush_redis", "restart_redis", "restart_postgres", "kill")
WORKER_SETTINGS = {
    "TASKFLOW_QUEUES": QUEUES_SETTING,
    "TASKFLOW_WORKER__LEASE_TTL": "2.0",
    "TASKFLOW_WORKER__HEARTBEAT_INTERVAL": "0.5",
    "TASKFLOW_WORKER__SHUTDOWN_GRACE": "3.0",
    "TASKFLOW_MAINTENANCE__REAPER_INTERVAL": "0.2",
    "TASKFLOW_MAINTENANCE__RECONCILE_INTERVAL": "1.0",
    "TASKFLOW_WORKER__METRICS_PORT": "0",
}


class ChaosConfig(Struct, frozen=True, kw_only=True):
    seed: int
    seconds: float  # how long faults are injected
    jobs: int
    concurrency: int = 8
    workflows: int = 4
    workers: int = 2
    gap: tuple[float, float] = (1.0, 3.0)  # pause after a recovery, before the next fault
    recovery_timeout: float = 30.0
    drain_timeout: float = 45.0
    log_dir: Path | None = None  # worker logs (a temporary folder when None)
    api: bool = True  # also run `taskflow serve` and submit through it during the faults


def plan_faults(rng: random.Random, seconds: float) -> list[str]:
    """Enough rounds for the run (a fault every ~5 s at most), each round shuffled."""
    wanted = max(2 * len(ROUND), int(seconds / 4))
    faults: list[str] = []
    while len(faults) < wanted:
        one = list(ROUND)
        rng.shuffle(one)
        faults += one
    return faults[:wanted]


class Chaos:
    def __init__(self, cfg: ChaosConfig, servers: ChaosServers, log_dir: Path,
                 plan: list[str], workload: Plan, stores: Stores) -> None:
        self.cfg = cfg
        self.plan = plan
        self.workload = workload
        self.stores = stores
        self.baits = 0  # bait jobs submitted
        self.servers = servers
        self.log_dir = log_dir
        self.rng = random.Random(cfg.seed)
        self.report = Report(seed=cfg.seed)
        self.probe = Probe(servers.database_url)
        self.recovery = Recovery(self.probe, servers.redis_url)
        self.workers: list[Role | None] = [None] * cfg.workers
        self.started = 0  # worker processes started so far (names their logs)
        self.killed: dict[int, datetime] = {}  # pids we SIGKILLed, and when
        self.expected_exit: set[int] = set()
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- workers -------------------------------------------------------------------------

    def start_worker(self, slot: int) -> None:
        self.started += 1
        args = ["work", "-c", str(self.cfg.concurrency)]
        for q in QUEUES:
            args += ["-q", q]
        self.workers[slot] = Role(self.servers, args,
                                  self.log_dir / f"worker{slot}-{self.started}.log",
                                  **WORKER_SETTINGS)

    async def serving(self, slot: int, timeout: float = 30.0) -> None:
        """Wait (bounded) until the worker in ``slot`` says it serves its queues: the next
        fault must find it running, not starting (a worker that cannot reach PostgreSQL
        at start exits by design, for its supervisor to start it again)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            role = self.workers[slot]
            if role is None or role.process.poll() is not None or " serving " in role.output():
                return  # an exit is the watcher's to report
            await asyncio.sleep(0.1)

    async def watch_workers(self) -> None:
        """A worker that exits without being killed is reported, and started again."""
        while True:
            await asyncio.sleep(0.2)
            for slot, role in enumerate(self.workers):
                if role is None or role.process.poll() is None:
                    continue
                if role.process.pid in self.expected_exit:
                    continue
                tail = "\n".join(role.output().splitlines()[-15:])
                self.report.worker_exits.append(
                    f"t={self.now():.1f}s worker pid {role.process.pid} exited by itself with "
                    f"{role.process.returncode}; its log ends:\n{tail}")
                role.wait()
                self.start_worker(slot)

    def stop_workers(self) -> None:
        for role in self.workers:
            if role is not None and role.process.poll() is None:
                self.expected_exit.add(role.process.pid)
                role.signal(signal.SIGTERM)
        for role in self.workers:
            if role is None:
                continue
            try:
                code = role.wait(timeout=20)
            except Exception:
                role.stop()
                code = "killed after 20 s"
            if code not in (0, -signal.SIGKILL) or (
                    code == -signal.SIGKILL and role.process.pid not in self.killed):
                tail = "\n".join(role.output().splitlines()[-15:])
                self.report.worker_exits.append(
                    f"worker pid {role.process.pid} ended with {code} at SIGTERM:\n{tail}")

    # -- faults --------------------------------------------------------------------------

    async def inject(self, kind: str) -> tuple[Fault, float]:
        """Do the fault; returns it and the monotonic time it was over."""
        fault = Fault(kind=kind, at=self.now(), wall=datetime.now(timezone.utc))
        if kind == "kill":
            slot = self.rng.randrange(len(self.workers))
            role = self.workers[slot]
            assert role is not None
            pid = role.process.pid
            self.expected_exit.add(pid)
            self.killed[pid] = datetime.now(timezone.utc)
            role.signal(signal.SIGKILL)
            await asyncio.to_thread(role.wait)
            back = time.monotonic()
            pause = self.rng.uniform(0.2, 1.5)
            fault.detail = f"worker pid {pid} (restarted after {pause:.1f}s)"
            await asyncio.sleep(pause)
            self.start_worker(slot)
            await self.serving(slot)
            return fault, back
        if kind == "flush_redis":
            await self.servers.flush_redis()
            return fault, time.monotonic()
        downtime = self.rng.uniform(0.3, 1.5)
        if kind == "restart_redis":
            await self.servers.stop_redis()
            await asyncio.sleep(downtime)
            await self.servers.start_redis()
            fault.detail = f"down {downtime:.1f}s"
            return fault, time.monotonic()
        if kind == "restart_postgres":
            mode = self.rng.choice(("fast", "immediate"))
            await self.probe.close()
            await self.servers.stop_postgres(mode)
            await asyncio.sleep(downtime)
            await self.servers.start_postgres()
            fault.detail = f"stop -m {mode}, down {downtime:.1f}s"
            return fault, time.monotonic()
        raise ValueError(kind)

    async def set_bait(self, n: int = 4, timeout: float = 10.0) -> int:
        """Submit ``n`` sleep jobs and wait (bounded) until they run; returns how many
        run. A retried submit is safe: each job has an idempotency key."""
        jobs = [bait(self.rng, self.workload, f"bait-{self.baits + i}") for i in range(n)]
        self.baits += n
        result = await retrying("submitting bait jobs",
                                 lambda: submit(self.stores.store, self.stores.dispatch, jobs))
        ids = [e.id for e in result.created]
        deadline = time.monotonic() + timeout
        running = 0
        while time.monotonic() < deadline:
            try:
                rows = await self.probe.fetch(
                    "SELECT count(*) AS n FROM jobs WHERE id = ANY($1::uuid[])"
                    " AND state = 'running'", ids)
                running = rows[0]["n"]
                if running == len(ids):
                    break
            except TRANSIENT:
                pass
            await asyncio.sleep(0.05)
        return running

    async def one_fault(self, kind: str) -> None:
        log.info("t=%.1fs next fault: %s", self.now(), kind)
        baited = await self.set_bait()
        exposed = await retrying("jobs exposed to the fault", self.recovery.exposed)
        last_attempt = await retrying("last attempt id", self.recovery.last_attempt)
        began = time.monotonic()
        fault, back = await self.inject(kind)
        fault.over = datetime.now(timezone.utc) - timedelta(seconds=time.monotonic() - back)
        hit = f"{len(exposed)} jobs running or leased"
        if baited < 4:
            hit += f" (only {baited} of 4 bait jobs running)"
        fault.detail = "; ".join(filter(None, (fault.detail, hit)))
        self.report.faults.append(fault)
        log.info("%s %s", fault.name, fault.detail)
        done, fault.stuck = await self.recovery.wait(back, exposed, last_attempt,
                                                     self.cfg.recovery_timeout)
        if done is not None:
            fault.recovered_after = done - began

    async def faults(self) -> None:
        for i, kind in enumerate(self.plan):
            gap = self.rng.uniform(*self.cfg.gap)
            # The first round goes in whole, however slow the machine: every kind of fault.
            if i >= len(ROUND) and self.now() + gap >= self.cfg.seconds:
                break
            await asyncio.sleep(gap)
            await self.one_fault(kind)
        rest = self.cfg.seconds - self.now()
        if rest > 0:
            await asyncio.sleep(rest)

    # -- the end -------------------------------------------------------------------------

    async def drain(self) -> float:
        """Wait (bounded) until no job is unfinished; returns how long it took."""
        began = time.monotonic()
        deadline = began + self.cfg.drain_timeout
        while time.monotonic() < deadline:
            try:
                rows = await self.probe.fetch(
                    "SELECT count(*) AS n FROM jobs WHERE state <> ALL($1::job_state[])",
                    list(checks.TERMINAL))
                if rows[0]["n"] == 0:
                    break
            except TRANSIENT:
                pass
            await asyncio.sleep(0.25)
        return time.monotonic() - began

    async def check(self, watcher: asyncio.Task) -> None:
        """Every invariant, into the report: Redis while the workers still run (a lease
        left behind is theirs), PostgreSQL once they have stopped."""
        v = self.report.violations
        client = aioredis.Redis.from_url(self.servers.redis_url, decode_responses=True)
        try:
            v["no_lease_left"] = await retrying("Redis at the end",
                                                lambda: self.redis_clean(client))
        finally:
            await client.aclose()
        await cancel_and_wait(watcher)
        self.stop_workers()
        conn = await retrying("PostgreSQL at the end", self.probe.connection)
        assert self.report.workload is not None
        v["jobs_exist"] = await checks.jobs_exist(conn, TENANT, self.report.workload.submitted)
        v.update(await left_unfinished(conn, self.report.faults))
        v["expected_states"] = await checks.expected_states(conn)
        v["one_success_per_job"] = await checks.one_success_per_job(conn)
        v["no_orphan_attempts"] = await checks.no_orphan_attempts(conn)
        v["dag_order"] = await checks.dag_order(conn)
        lease = timedelta(seconds=float(WORKER_SETTINGS["TASKFLOW_WORKER__LEASE_TTL"]))
        lost = await wrongly_lost(conn, self.report.faults, self.killed, lease)
        v["lost_only_to_kills"] = lost.get("lost_only_to_kills", [])
        v["no_attempt_lost_to_postgres_restarts"] = lost.get(
            "no_attempt_lost_to_postgres_restarts", [])
        v["workers_stay_up"] = list(self.report.worker_exits)
        v["every_fault_recovers"] = [
            f"{f.name} ({f.detail}) not recovered within {self.cfg.recovery_timeout}s: "
            f"{f.stuck}" for f in self.report.faults if f.recovered_after is None]

    async def redis_clean(self, client: aioredis.Redis, timeout: float = 6.0) -> list[str]:
        """Leases of finished jobs go at once; wait a little for the last ones."""
        deadline = time.monotonic() + timeout
        while True:
            left = await checks.no_lease_left(client)
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)


async def run_chaos(cfg: ChaosConfig) -> Report:
    """The whole run. Raises only when the harness itself cannot proceed (a server that
    does not start); what the system under test gets wrong is in the report."""
    servers = ChaosServers()
    log_dir = cfg.log_dir or servers.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    chaos: Chaos | None = None
    watcher: asyncio.Task | None = None
    api: ApiClient | None = None
    try:
        await servers.start()
        faults = plan_faults(random.Random(cfg.seed), cfg.seconds)
        # A kill takes at most one attempt from a job, so this many spare attempts make
        # every expectation certain (past 20 kills, a job hit by every one is not credible).
        plan = Plan(jobs=cfg.jobs, spread=cfg.seconds, kills=min(20, faults.count("kill")),
                    workflows=cfg.workflows,
                    # sleep jobs (0.85 s on average) may fill a third of the workers' slots
                    sleepers=int(cfg.seconds * cfg.workers * cfg.concurrency / 3 / 0.85))
        # pool_min 0: no pool reconnecting in the background (and logging) while the
        # PostgreSQL it is connected to is down on purpose.
        settings = settings_from_dict({"database_url": servers.database_url,
                                       "redis_url": servers.redis_url,
                                       "data_dir": str(servers.data_dir),
                                       "database": {"pool_min": 0}})
        async with open_stores(settings, servers.database_url, servers.redis_url) as stores:
            workload = await submit_workload(stores.store, stores.dispatch, plan,
                                             random.Random(cfg.seed + 1))
            chaos = Chaos(cfg, servers, log_dir, faults, plan, stores)
            chaos.t0 = time.monotonic()
            for slot in range(cfg.workers):
                chaos.start_worker(slot)
            for slot in range(cfg.workers):
                await chaos.serving(slot)
            watcher = asyncio.create_task(chaos.watch_workers())
            if cfg.api:
                api = ApiClient(servers, log_dir, TENANT, attempts=plan.kills + 1,
                                ttl=cfg.seconds + cfg.drain_timeout + 3600)
                await api.start()
                stop = asyncio.Event()
                client = asyncio.create_task(api.run(stop))
            await chaos.faults()
            if api is not None:
                stop.set()
                await client
                chaos.report.violations["api_takes_submits"] = await api.finish() + api.exits
        report = chaos.report
        kinds = {**workload.kinds, "bait": chaos.baits, "api": api.keys if api else 0}
        report.workload = Workload(sum(kinds.values()), kinds)
        drain = await chaos.drain()
        if api is not None:
            report.violations["api_takes_submits"] += api.stop()
            report.violations["api_answers_503_not_500"] = list(api.errors)
            report.api = (f"{api.accepted} of {api.keys} keys accepted; other answers "
                          f"{api.refusals or 'none'}; longest wait for an accepted submit "
                          f"{api.longest_outage:.2f}s")
        await chaos.check(watcher)
        report.figures = await figures(report, await chaos.probe.connection(), drain,
                                       chaos.now())
        (log_dir / "chaos-report.txt").write_text(report.details())
        return report
    finally:
        if api is not None:
            api.kill()
        if watcher is not None:
            await cancel_and_wait(watcher)
        if chaos is not None:
            for role in chaos.workers:
                if role is not None:
                    role.stop()
            await chaos.probe.close()
        await asyncio.to_thread(servers.stop)
