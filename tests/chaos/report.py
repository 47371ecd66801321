"""What a chaos run reports: its faults, the figures, and the violations of each
invariant."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta

import asyncpg
from msgspec import Struct, field

from tests.chaos import checks
from tests.chaos.workload import Workload

# The invariants of checks.py, then those the run itself watches.
INVARIANTS = (*checks.INVARIANTS, "nothing_unfinished", "nothing_lost_to_postgres_restarts",
              "lost_only_to_kills", "no_attempt_lost_to_postgres_restarts",
              "workers_stay_up", "every_fault_recovers", "api_takes_submits",
              "api_answers_503_not_500")


class Fault(Struct, kw_only=True):
    kind: str
    at: float  # seconds since the workers started
    wall: datetime  # when, to read beside attempts and logs
    over: datetime | None = None  # when it was over (the server back, the worker killed)
    detail: str = ""
    recovered_after: float | None = None  # seconds from the fault to progress again
    stuck: str = ""  # what had not recovered, when it did not

    @property
    def name(self) -> str:
        return f"{self.kind} at t={self.at:.1f}s ({self.wall:%H:%M:%S.%f}"[:-3] + " UTC)"


class Report(Struct, kw_only=True):
    seed: int
    workload: Workload | None = None
    faults: list[Fault] = field(default_factory=list)
    worker_exits: list[str] = field(default_factory=list)  # exits nobody asked for
    violations: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    api: str = ""  # what the API client saw

    def failed(self, invariant: str) -> list[str]:
        return self.violations.get(invariant, [])

    def summary(self) -> str:
        lines = [f"chaos seed {self.seed}"]
        lines += [f"  {k}: {v}" for k, v in self.figures.items()]
        for f in self.faults:
            took = ("NOT RECOVERED" if f.recovered_after is None
                    else f"recovered in {f.recovered_after:.2f}s")
            lines.append(f"  {f.name} {f.detail}: {took}")
        for name in INVARIANTS:
            lines.append(f"  invariant {name}: {'VIOLATED' if self.failed(name) else 'held'}")
        return "\n".join(lines)

    def details(self) -> str:
        """The summary, then every violation in full."""
        parts = [self.summary()]
        for name in INVARIANTS:
            if self.failed(name):
                parts.append(f"== {name} ==\n" + "\n".join(self.failed(name)))
        return "\n\n".join(parts)


async def figures(report: Report, conn: asyncpg.Connection, drain: float,
                  total: float) -> dict[str, object]:
    faults = report.faults
    kinds = Counter(f.kind for f in faults)
    recovered = [f for f in faults if f.recovered_after is not None]
    worst = max(recovered, key=lambda f: f.recovered_after or 0, default=None)
    states = {r["state"]: r["n"] for r in await conn.fetch(
        "SELECT state::text, count(*) AS n FROM jobs GROUP BY state ORDER BY state")}
    outcomes = {r["outcome"]: r["n"] for r in await conn.fetch(
        "SELECT outcome, count(*) AS n FROM job_attempts GROUP BY outcome ORDER BY outcome")}
    workload = report.workload
    return {
        "jobs": workload.submitted if workload else 0,
        "jobs by kind": workload.kinds if workload else {},
        "final states": states,
        "attempts by outcome": outcomes,
        "kills": kinds["kill"],
        "redis flushes": kinds["flush_redis"],
        "redis restarts": kinds["restart_redis"],
        "postgres restarts": kinds["restart_postgres"],
        "recoveries": f"{len(recovered)} of {len(faults)} faults",
        "worst recovery": f"{worst.recovered_after:.2f}s ({worst.name})" if worst else "-",
        "median recovery": (f"{statistics.median(f.recovered_after for f in recovered):.2f}s"
                            if recovered else "-"),
        "unexpected worker exits": len(report.worker_exits),
        "api submits": report.api or "-",
        "drain after the faults": f"{drain:.1f}s",
        "total": f"{total:.1f}s",
    }


async def left_unfinished(conn: asyncpg.Connection, faults: list[Fault]
                          ) -> dict[str, list[str]]:
    """Jobs left unfinished, by invariant: those due while PostgreSQL was down (or just
    before: a worker claims them from Redis, then cannot start them), and all others."""
    windows = [(f.wall - timedelta(seconds=2), (f.over or f.wall) + timedelta(seconds=1))
               for f in faults if f.kind == "restart_postgres"]
    pg, other = [], []
    for r in await checks.unfinished(conn):
        due_while_down = any(lo <= r["run_at"] <= hi for lo, hi in windows)
        (pg if due_while_down else other).append(r["id"])
    return {
        "nothing_unfinished": await checks.listed(conn, "left unfinished", other),
        "nothing_lost_to_postgres_restarts": await checks.listed(
            conn, "left unfinished that fell due while PostgreSQL was restarting (see the "
            "faults below)", pg),
    }


async def wrongly_lost(conn: asyncpg.Connection, faults: list[Fault],
                       killed: Mapping[int, datetime], lease: timedelta) -> dict[str, list[str]]:
    """Attempts charged as lost although their worker was not SIGKILLed while they ran,
    by invariant: those a PostgreSQL restart may explain (it struck while they ran, or
    less than a lease before they started: their lease was taken at claim time), and
    all others (Redis faults, or no fault at all)."""
    rows = await conn.fetch("SELECT job_id, worker, started_at, finished_at FROM job_attempts"
                            " WHERE outcome = 'lost' ORDER BY id")
    groups: dict[str, tuple[Counter[str], list]] = {}
    for r in rows:
        if checks.killed_running(r["worker"], r["finished_at"], killed):
            continue
        during = [f for f in faults if r["started_at"] - lease <= f.wall <= r["finished_at"]]
        name = ("no_attempt_lost_to_postgres_restarts"
                if any(f.kind == "restart_postgres" for f in during) else "lost_only_to_kills")
        blamed, ids = groups.setdefault(name, (Counter(), []))
        blamed[", ".join(f.name for f in during) or "no fault"] += 1
        ids.append(r["job_id"])
    out = {}
    for name, (blamed, ids) in groups.items():
        out[name] = [
            f"{len(ids)} attempts of {len(set(ids))} jobs charged as lost although their worker "
            "was not killed while they ran; by the faults they ran through (or that came less "
            "than a lease before they started): "
            + "; ".join(f"{what}: {n}" for what, n in blamed.items()),
            await checks.describe(conn, list(dict.fromkeys(ids)))]
    return out
