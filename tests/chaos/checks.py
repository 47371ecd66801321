"""The invariants a chaos run must leave behind, read from PostgreSQL (and Redis for
leases). Each check returns the violations it found, as sentences naming the jobs and
their attempts; an empty list means the invariant held."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg
import redis.asyncio as aioredis

TERMINAL = ("succeeded", "failed", "cancelled")
SHOWN = 10  # jobs described in full per violated invariant

# Every check's name, in the order they are reported.
INVARIANTS = (
    "jobs_exist",
    "expected_states",
    "one_success_per_job",
    "no_orphan_attempts",
    "dag_order",
    "no_lease_left",
)


async def describe(conn: asyncpg.Connection, ids: Sequence, limit: int = SHOWN) -> str:
    """Each job (up to ``limit``) with its state, error and every attempt."""
    ids = list(ids)[:limit]
    if not ids:
        return ""
    jobs = await conn.fetch(
        "SELECT id, task, labels->>'kind' AS kind, node, state, attempts, max_attempts,"
        " error, payload, queue, created_at, run_at FROM jobs WHERE id = ANY($1::uuid[])"
        " ORDER BY id", ids)
    attempts = await conn.fetch(
        "SELECT job_id, attempt, worker, outcome, error, started_at, finished_at"
        " FROM job_attempts WHERE job_id = ANY($1::uuid[]) ORDER BY id", ids)
    by_job: dict = {}
    for a in attempts:
        by_job.setdefault(a["job_id"], []).append(a)
    def short(error: str | None) -> str:
        return repr(error.splitlines()[0][:200]) if error else "None"

    lines = []
    for j in jobs:
        lines.append(f"  job {j['id']} ({j['kind']}{'/' + j['node'] if j['node'] else ''}, "
                     f"{j['task']} {j['payload']}): {j['state']}, attempts "
                     f"{j['attempts']}/{j['max_attempts']}, error {short(j['error'])}; "
                     f"queue {j['queue']}, created {j['created_at']:%H:%M:%S.%f}, due "
                     f"{j['run_at']:%H:%M:%S.%f}")
        if j["state"] == "blocked":
            for u in await conn.fetch(
                    "SELECT u.id, u.node, u.state FROM job_dependencies AS d JOIN jobs AS u"
                    " ON u.id = d.upstream_id WHERE d.job_id = $1 ORDER BY u.id", j["id"]):
                lines.append(f"    waits on {u['id']} ({u['node']}): {u['state']}")
        for a in by_job.get(j["id"], []):
            lines.append(f"    attempt {a['attempt']} on {a['worker']}: {a['outcome']} "
                         f"({a['started_at']:%H:%M:%S.%f} -> {a['finished_at']:%H:%M:%S.%f})"
                         f"{' ' + short(a['error']) if a['error'] else ''}")
    return "\n".join(lines)


async def listed(conn: asyncpg.Connection, what: str, ids: Sequence) -> list[str]:
    """A violation naming ``ids`` (none when there are none), described in full."""
    if not ids:
        return []
    return [f"{len(ids)} jobs {what}:\n{await describe(conn, ids)}"]


async def jobs_exist(conn: asyncpg.Connection, tenant: str, submitted: int) -> list[str]:
    n = await conn.fetchval("SELECT count(*) FROM jobs WHERE tenant = $1", tenant)
    return [] if n == submitted else [f"{submitted} jobs submitted, {n} in PostgreSQL"]


async def unfinished(conn: asyncpg.Connection) -> list:
    """Jobs not in a terminal state (id, run_at)."""
    return await conn.fetch("SELECT id, run_at FROM jobs WHERE state <> ALL($1::job_state[])"
                            " ORDER BY id", list(TERMINAL))


async def expected_states(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT id, labels->>'expect' AS expect, state::text FROM jobs"
        " WHERE state::text <> labels->>'expect' AND state = ANY($1::job_state[])"
        " ORDER BY id", list(TERMINAL))
    out = []
    wrong: dict[tuple[str, str], list] = {}
    for r in rows:
        wrong.setdefault((r["expect"], r["state"]), []).append(r["id"])
    for (expect, state), ids in sorted(wrong.items()):
        out += await listed(conn, f"ended {state} instead of {expect}", ids)
    return out


async def one_success_per_job(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT j.id, j.state::text AS state, count(a.id) FILTER"
        " (WHERE a.outcome = 'succeeded') AS wins"
        " FROM jobs AS j LEFT JOIN job_attempts AS a ON a.job_id = j.id"
        " GROUP BY j.id, j.state"
        " HAVING count(a.id) FILTER (WHERE a.outcome = 'succeeded')"
        "        <> CASE WHEN j.state = 'succeeded' THEN 1 ELSE 0 END ORDER BY j.id")
    twice = [r["id"] for r in rows if r["wins"] > 1]
    other = [r["id"] for r in rows if r["wins"] <= 1]
    return (await listed(conn, "succeeded more than once", twice)
            + await listed(conn, "whose success attempts disagree with their state", other))


async def no_orphan_attempts(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.job_id, count(*) AS n FROM job_attempts AS a"
        " WHERE NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = a.job_id)"
        " GROUP BY a.job_id ORDER BY a.job_id")
    return [f"{r['n']} attempt rows of job {r['job_id']}, which does not exist"
            for r in rows[:SHOWN]] + ([f"... {len(rows)} such jobs"] if len(rows) > SHOWN else [])


async def dag_order(conn: asyncpg.Connection) -> list[str]:
    """A dependent ran only after every upstream succeeded, and after its success."""
    rows = await conn.fetch("""
        WITH first_start AS (
            SELECT job_id, min(started_at) AS started_at FROM job_attempts GROUP BY job_id
        ), win AS (
            SELECT job_id, max(finished_at) AS finished_at FROM job_attempts
            WHERE outcome = 'succeeded' GROUP BY job_id
        )
        SELECT d.job_id, d.upstream_id, f.started_at, w.finished_at
        FROM job_dependencies AS d
        JOIN first_start AS f ON f.job_id = d.job_id
        LEFT JOIN win AS w ON w.job_id = d.upstream_id
        WHERE w.finished_at IS NULL OR w.finished_at > f.started_at
        ORDER BY d.job_id""")
    out = []
    for r in rows[:SHOWN]:
        when = ("its upstream never succeeded" if r["finished_at"] is None else
                f"its upstream succeeded at {r['finished_at']:%H:%M:%S.%f}")
        out.append(f"job {r['job_id']} started at {r['started_at']:%H:%M:%S.%f} but "
                   f"{when} (upstream {r['upstream_id']}):\n"
                   f"{await describe(conn, [r['job_id'], r['upstream_id']])}")
    return out


async def no_lease_left(client: aioredis.Redis) -> list[str]:
    """No lease key and no in-flight entry remains once every job has finished."""
    leases = [k async for k in client.scan_iter(match="*:lease:*", count=1000)]
    inflight = {}
    async for key in client.scan_iter(match="*:inflight", count=1000):
        members = await client.zrange(key, 0, SHOWN)
        if members:
            inflight[key] = members
    out = []
    if leases:
        shown = sorted(k if isinstance(k, str) else k.decode() for k in leases)[:SHOWN]
        out.append(f"{len(leases)} lease keys left in Redis: {shown}")
    for key, members in sorted(inflight.items()):
        out.append(f"in-flight entries left in {key}: {members}")
    return out


def pid_of(worker: str | None) -> int | None:
    try:
        return int((worker or "").split(":")[1])
    except (IndexError, ValueError):
        return None


def killed_running(worker: str | None, finished_at: datetime,
                   killed: Mapping[int, datetime]) -> bool:
    """Whether the worker of an attempt that ended at ``finished_at`` was SIGKILLed
    before it ended (a lost attempt's end is when the rescue recorded it)."""
    when = killed.get(pid_of(worker))  # type: ignore[arg-type]
    return when is not None and when <= finished_at
