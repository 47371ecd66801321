"""One chaos run: servers of its own, two ``taskflow work`` processes, the workload, a
seeded sequence of faults (each waits for the system to recover from the last one),
then the drain and the checks. Everything it starts is stopped when it ends."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import statistics
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from msgspec import Struct, field

from taskflow.config import settings_from_dict
from taskflow.runtime import open_stores
from tests.chaos import checks
from tests.chaos.servers import ChaosServers
from taskflow.jobs import submit
from taskflow.runtime import Stores
from tests.chaos.workload import QUEUES, TENANT, Plan, Workload, bait, submit_workload
from tests.e2e.processes import Role

log = logging.getLogger("chaos")

FAULTS = ("kill", "flush_redis", "restart_redis", "restart_postgres")
# One round of faults: every kind once and a second kill, shuffled per round; repeated for
# longer runs, so even a short run sees every kind.
ROUND = ("kill", "flush_redis", "restart_redis", "restart_postgres", "kill")
# What a server that is restarting answers: worth another try.
TRANSIENT = (OSError, ConnectionError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
             asyncpg.exceptions.OperatorInterventionError, asyncpg.InterfaceError,
             redis_errors.ConnectionError, redis_errors.TimeoutError,
             redis_errors.BusyLoadingError)
WORKER_SETTINGS = {
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


class Fault(Struct, kw_only=True):
    kind: str
    at: float  # seconds since the run began
    clock: str = ""  # wall-clock time (UTC), to read beside attempts and logs
    wall: datetime | None = None
    detail: str = ""
    recovered_after: float | None = None  # seconds from the fault to progress again
    stuck: str = ""  # what had not recovered, when it did not


class Report(Struct, kw_only=True):
    seed: int
    workload: Workload | None = None
    faults: list[Fault] = field(default_factory=list)
    worker_exits: list[str] = field(default_factory=list)  # exits nobody asked for
    violations: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)

    def failed(self, invariant: str) -> list[str]:
        return self.violations.get(invariant, [])

    def details(self) -> str:
        """The summary, then every violation in full."""
        parts = [self.summary()]
        for name, violations in self.violations.items():
            if violations:
                parts.append(f"== {name} ==\n" + "\n".join(violations))
        return "\n\n".join(parts)

    def summary(self) -> str:
        lines = [f"chaos seed {self.seed}"]
        lines += [f"  {k}: {v}" for k, v in self.figures.items()]
        for f in self.faults:
            took = ("not recovered" if f.recovered_after is None
                    else f"recovered in {f.recovered_after:.2f}s")
            lines.append(f"  t={f.at:6.1f}s ({f.clock} UTC) {f.kind} {f.detail}: {took}")
        for name in (*checks.INVARIANTS, "workers_stay_up", "every_fault_recovers"):
            bad = self.failed(name)
            lines.append(f"  invariant {name}: {'VIOLATED' if bad else 'held'}")
        return "\n".join(lines)


def plan_faults(rng: random.Random, seconds: float) -> list[str]:
    """Enough rounds for the run (a fault every ~5 s at most), each round shuffled."""
    wanted = max(2 * len(ROUND), int(seconds / 4))
    faults: list[str] = []
    while len(faults) < wanted:
        one = list(ROUND)
        rng.shuffle(one)
        faults += one
    return faults[:wanted]


class Probe:
    """The harness's own PostgreSQL connection, opened again after a restart."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: asyncpg.Connection | None = None

    async def connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self.url, timeout=3)
        return self.conn

    async def fetch(self, query: str, *args: object) -> list:
        try:
            return await (await self.connection()).fetch(query, *args, timeout=10)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


async def _retrying(what: str, call, timeout: float = 30.0):
    """``call()`` until it stops failing with a transient error (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            log.info("%s: %r (retrying)", what, exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout}s: {exc!r}")
            await asyncio.sleep(0.1)


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
        self.workers: list[Role | None] = [None] * cfg.workers
        self.started = 0  # worker processes started so far (names their logs)
        self.killed: set[int] = set()  # pids we SIGKILLed
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
        wall = datetime.now(timezone.utc)
        fault = Fault(kind=kind, at=self.now(), clock=wall.strftime("%H:%M:%S.%f")[:-3],
                      wall=wall)
        if kind == "kill":
            slot = self.rng.randrange(len(self.workers))
            role = self.workers[slot]
            assert role is not None
            pid = role.process.pid
            self.expected_exit.add(pid)
            self.killed.add(pid)
            role.signal(signal.SIGKILL)
            await asyncio.to_thread(role.wait)
            back = time.monotonic()
            pause = self.rng.uniform(0.2, 1.5)
            fault.detail = f"worker pid {pid} (restarted after {pause:.1f}s)"
            await asyncio.sleep(pause)
            self.start_worker(slot)
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

    async def affected(self) -> dict:
        """Jobs a fault can hit: running in PostgreSQL or leased in Redis, with their
        attempt counts."""
        client = aioredis.Redis.from_url(self.servers.redis_url, decode_responses=True)
        try:
            leased = []
            for q in QUEUES:
                # In-flight members are "<job id>|<lease token>".
                leased += [m.partition("|")[0]
                           for m in await client.zrange(f"tf:{{{q}}}:inflight", 0, -1)]
        finally:
            await client.aclose()
        rows = await self.probe.fetch(
            "SELECT id, attempts FROM jobs WHERE state = 'running' OR id = ANY($1::uuid[])",
            leased)
        return {r["id"]: r["attempts"] for r in rows}

    async def recovered(self, fault: Fault, began: float, back: float, snapshot: dict,
                        last_attempt: int) -> None:
        """Wait until the system makes progress again, and note how long that took:
        a job that started after the fault has finished (or none is due), and every job
        the fault could hit has been dealt with: it finished, ran again, or waits indexed
        in Redis for its next attempt (so a backlog does not count as a stall)."""
        since = datetime.now(timezone.utc) - timedelta(seconds=time.monotonic() - back)
        deadline = time.monotonic() + self.cfg.recovery_timeout
        pending = dict(snapshot)
        progressed = False
        client = aioredis.Redis.from_url(self.servers.redis_url, decode_responses=True)
        try:
            while True:
                try:
                    if not progressed:
                        progressed = await self.progressed(last_attempt, since)
                    if pending:
                        for job_id in await self.dealt_with(client, pending):
                            pending.pop(job_id, None)
                except TRANSIENT:
                    pass
                if progressed and not pending:
                    fault.recovered_after = time.monotonic() - began
                    return
                if time.monotonic() > deadline:
                    fault.stuck = await self.stuck(progressed, pending)
                    return
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    async def progressed(self, last_attempt: int, since: datetime) -> bool:
        """A job started after ``since`` has finished, or no job is due."""
        rows = await self.probe.fetch(
            "SELECT EXISTS (SELECT 1 FROM job_attempts WHERE id > $1 AND started_at >= $2)"
            " OR NOT EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued', 'scheduled')"
            " AND run_at <= now()) AS ok", last_attempt, since)
        return rows[0]["ok"]

    async def dealt_with(self, client: aioredis.Redis, pending: dict) -> list:
        """The jobs of ``pending`` (id -> attempts when the fault struck) that finished,
        started another attempt, or wait indexed in Redis."""
        rows = await self.probe.fetch(
            "SELECT id, queue, priority, state::text, attempts FROM jobs"
            " WHERE id = ANY($1::uuid[])", list(pending))
        done, waiting = [], []
        for r in rows:
            if r["state"] in checks.TERMINAL or r["attempts"] > pending[r["id"]]:
                done.append(r["id"])
            elif r["state"] in ("queued", "scheduled"):
                waiting.append(r)
        if waiting:
            async with client.pipeline(transaction=False) as pipe:
                for r in waiting:
                    pipe.zscore(f"tf:{{{r['queue']}}}:ready", str(r["id"]))
                    pipe.zscore(f"tf:{{{r['queue']}}}:delayed", f"{r['id']}|{r['priority']}")
                scores = await pipe.execute()
            done += [r["id"] for i, r in enumerate(waiting)
                     if scores[2 * i] is not None or scores[2 * i + 1] is not None]
        return done

    async def stuck(self, progressed: bool, pending: dict) -> str:
        what = [] if progressed else ["no job started after the fault has finished"]
        if pending:
            try:
                conn = await self.probe.connection()
                what.append(f"{len(pending)} jobs it hit neither finished, ran again nor "
                            f"wait in Redis:\n{await checks.describe(conn, list(pending))}")
            except TRANSIENT as exc:
                what.append(f"{len(pending)} jobs hit (PostgreSQL unreachable: {exc!r})")
        return "\n".join(what)

    async def set_bait(self, n: int = 4, timeout: float = 10.0) -> int:
        """Submit ``n`` sleep jobs and wait (bounded) until they run; returns how many
        run. A retried submit is safe: each job has an idempotency key."""
        jobs = [bait(self.rng, self.workload, f"bait-{self.baits + i}") for i in range(n)]
        self.baits += n
        result = await _retrying("submitting bait jobs",
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
        snapshot = await _retrying("snapshot before a fault", self.affected)
        [row] = await _retrying("last attempt id", lambda: self.probe.fetch(
            "SELECT coalesce(max(id), 0) AS id FROM job_attempts"))
        began = time.monotonic()
        log.info("t=%.1fs %d jobs running or leased; injecting %s", self.now(), len(snapshot),
                 kind)
        fault, back = await self.inject(kind)
        hit = f"{len(snapshot)} jobs running or leased"
        if baited < 4:
            hit += f" (only {baited} of 4 bait jobs running)"
        fault.detail = "; ".join(filter(None, (fault.detail, hit)))
        self.report.faults.append(fault)
        log.info("t=%.1fs %s %s", fault.at, kind, fault.detail)
        await self.recovered(fault, began, back, snapshot, row["id"])

    async def faults(self) -> None:
        for kind in self.plan:
            gap = self.rng.uniform(*self.cfg.gap)
            if self.now() + gap >= self.cfg.seconds:
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

    async def redis_clean(self, client: aioredis.Redis, timeout: float = 6.0) -> list[str]:
        """Leases of finished jobs go at once; wait a little for the last ones."""
        deadline = time.monotonic() + timeout
        while True:
            left = await checks.no_lease_left(client)
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)


async def _figures(chaos: Chaos, conn: asyncpg.Connection, drain: float,
                   total: float) -> dict[str, object]:
    faults = chaos.report.faults
    kinds = Counter(f.kind for f in faults)
    times = [f.recovered_after for f in faults if f.recovered_after is not None]
    worst = max((f for f in faults if f.recovered_after is not None),
                key=lambda f: f.recovered_after or 0, default=None)
    states = {r["state"]: r["n"] for r in await conn.fetch(
        "SELECT state::text, count(*) AS n FROM jobs GROUP BY state")}
    outcomes = {r["outcome"]: r["n"] for r in await conn.fetch(
        "SELECT outcome, count(*) AS n FROM job_attempts GROUP BY outcome")}
    workload = chaos.report.workload
    return {
        "jobs": workload.submitted if workload else 0,
        "jobs by kind": workload.kinds if workload else {},
        "final states": states,
        "attempts by outcome": outcomes,
        "kills": kinds["kill"],
        "redis flushes": kinds["flush_redis"],
        "redis restarts": kinds["restart_redis"],
        "postgres restarts": kinds["restart_postgres"],
        "recoveries": f"{len(times)} of {len(faults)} faults",
        "worst recovery": (f"{worst.recovered_after:.2f}s ({worst.kind} at t={worst.at:.1f}s)"
                           if worst else "-"),
        "median recovery": f"{statistics.median(times):.2f}s" if times else "-",
        "unexpected worker exits": len(chaos.report.worker_exits),
        "drain after the faults": f"{drain:.1f}s",
        "total": f"{total:.1f}s",
    }


async def _blame(conn: asyncpg.Connection, chaos: Chaos) -> list[str]:
    """Which fault each wrongly lost attempt was running through."""
    rows = await conn.fetch("SELECT worker, started_at, finished_at FROM job_attempts"
                            " WHERE outcome = 'lost' ORDER BY id")
    blamed: Counter[str] = Counter()
    for r in rows:
        if checks.pid_of(r["worker"]) in chaos.killed:
            continue
        during = [f for f in chaos.report.faults
                  if f.wall is not None and r["started_at"] <= f.wall <= r["finished_at"]]
        blamed[", ".join(f"{f.kind} at t={f.at:.1f}s ({f.clock} UTC)" for f in during)
               or "no fault"] += 1
    return ["attempts charged as lost with no killed worker, by the fault they ran through: "
            + "; ".join(f"{what}: {n}" for what, n in blamed.items())]


async def run_chaos(cfg: ChaosConfig) -> Report:
    """The whole run. Raises only when the harness itself cannot proceed (a server that
    does not start); what the system under test gets wrong is in the report."""
    servers = ChaosServers()
    log_dir = cfg.log_dir or servers.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    chaos: Chaos | None = None
    watcher: asyncio.Task | None = None
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
            watcher = asyncio.create_task(chaos.watch_workers())
            await chaos.faults()
        kinds = {**workload.kinds, "bait": chaos.baits}
        chaos.report.workload = Workload(workload.submitted + chaos.baits, kinds)
        drain = await chaos.drain()
        report = chaos.report
        client = aioredis.Redis.from_url(servers.redis_url, decode_responses=True)
        try:
            report.violations["no_lease_left"] = await _retrying(
                "Redis at the end", lambda: chaos.redis_clean(client))
        finally:
            await client.aclose()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        chaos.stop_workers()
        conn = await _retrying("PostgreSQL at the end", chaos.probe.connection)
        v = report.violations
        v["jobs_exist"] = await checks.jobs_exist(conn, TENANT, report.workload.submitted)
        v["nothing_unfinished"] = await checks.nothing_unfinished(conn)
        v["expected_states"] = await checks.expected_states(conn)
        v["one_success_per_job"] = await checks.one_success_per_job(conn)
        v["no_orphan_attempts"] = await checks.no_orphan_attempts(conn)
        v["dag_order"] = await checks.dag_order(conn)
        v["lost_only_to_kills"] = await checks.lost_only_to_kills(conn, chaos.killed)
        if v["lost_only_to_kills"]:
            v["lost_only_to_kills"][:0] = await _blame(conn, chaos)
        v["workers_stay_up"] = list(report.worker_exits)
        v["every_fault_recovers"] = [
            f"{f.kind} at t={f.at:.1f}s ({f.detail}) not recovered within "
            f"{cfg.recovery_timeout}s: {f.stuck}" for f in report.faults
            if f.recovered_after is None]
        report.figures = await _figures(chaos, conn, drain, chaos.now())
        (log_dir / "chaos-report.txt").write_text(report.details())
        return report
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if chaos is not None:
            for role in chaos.workers:
                if role is not None:
                    role.stop()
            await chaos.probe.close()
        await asyncio.to_thread(servers.stop)
