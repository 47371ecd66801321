"""The chaos run's jobs: each carries the state it must end in (label ``expect``) and
its kind (label ``kind``), so the final checks read every expectation from PostgreSQL.

Attempt budgets make the expectations hold whatever the faults do: a SIGKILL takes at
most one attempt from a job (the one running in the killed worker), so a job that should
succeed gets ``designed failures + planned kills + 1`` attempts. Nothing else may cost a
job an attempt (the checks say so when something does).
"""

from __future__ import annotations

import random
from collections import Counter

from msgspec import Struct

from taskflow.adapters.postgres import PostgresStore
from taskflow.adapters.redis import RedisDispatch
from taskflow.config import RetryPolicy
from taskflow.dag import check_workflow
from taskflow.jobs import submit, submit_workflow
from taskflow.models import NewJob, WorkflowNode

TENANT = "chaos"
QUEUES = ("default", "batch")
QUEUES_SETTING = '["default", "batch"]'  # TASKFLOW_QUEUES: the queues that exist
# Short backoff, no jitter: retries come back within half a second.
BACKOFF = RetryPolicy(base_delay=0.05, factor=2.0, max_delay=0.5, jitter=0.0)


class Plan(Struct, frozen=True):
    """How big the workload is and over how many seconds its delayed jobs fall due."""

    jobs: int
    spread: float  # seconds over which delays are spread
    kills: int  # SIGKILLs planned: attempts each job may lose to them
    workflows: int  # diamond workflows (each 4 jobs) and as many doomed ones (4 jobs)
    sleepers: int  # most ``sleep`` jobs: what the workers can run without falling behind


class Workload(Struct, frozen=True):
    submitted: int  # jobs created
    kinds: dict[str, int]


def _job(rng: random.Random, kind: str, plan: Plan, key: str) -> NewJob:
    spare = plan.kills + 1
    delay = round(rng.uniform(0, plan.spread), 3)
    queue = rng.choice(QUEUES)
    labels = {"kind": kind}
    if kind == "tick":  # delayed no-op: there is always something falling due
        return NewJob(task="noop", max_attempts=spare, delay=delay, queue=queue,
                      labels={**labels, "expect": "succeeded"}, tenant=TENANT,
                      idempotency_key=key, retry_policy=BACKOFF)
    if kind == "sleep":  # long enough to be running when a fault strikes
        seconds = round(rng.uniform(0.2, 1.5), 2)
        return NewJob(task="sleep", payload={"seconds": seconds}, max_attempts=spare,
                      delay=delay, queue=queue, labels={**labels, "expect": "succeeded"},
                      tenant=TENANT, idempotency_key=key, retry_policy=BACKOFF)
    if kind == "retry":  # fails its first 1 or 2 attempts, then succeeds
        times = rng.choice((1, 2))
        return NewJob(task="fail", payload={"times": times}, max_attempts=times + spare,
                      delay=delay, queue=queue, labels={**labels, "expect": "succeeded"},
                      tenant=TENANT, idempotency_key=key, retry_policy=BACKOFF)
    if kind == "doomed":  # always fails: retried up to 2 attempts, then failed
        return NewJob(task="fail", payload={"message": "doomed on purpose"}, max_attempts=2,
                      delay=delay, queue=queue, labels={**labels, "expect": "failed"},
                      tenant=TENANT, idempotency_key=key, retry_policy=BACKOFF)
    if kind == "fatal":  # fails without retry, whatever attempts it has left
        return NewJob(task="fail", payload={"retryable": False, "message": "fatal on purpose"},
                      max_attempts=spare, delay=delay, queue=queue,
                      labels={**labels, "expect": "failed"}, tenant=TENANT,
                      idempotency_key=key, retry_policy=BACKOFF)
    raise ValueError(kind)


def bait(rng: random.Random, plan: Plan, key: str) -> NewJob:
    """A job submitted just before a fault and running when it strikes, so every fault
    hits running jobs (which is what the faults are about)."""
    # Top priority: claimed ahead of any backlog, so it runs before the fault.
    return NewJob(task="sleep", payload={"seconds": round(rng.uniform(1.5, 2.5), 2)},
                  max_attempts=plan.kills + 1, queue=rng.choice(QUEUES), tenant=TENANT,
                  priority=1000,
                  labels={"kind": "bait", "expect": "succeeded"}, idempotency_key=key,
                  retry_policy=BACKOFF)


# Share of each kind among the single jobs.
MIX = (("tick", 0.55), ("sleep", 0.2), ("retry", 0.15), ("doomed", 0.05), ("fatal", 0.05))


def _node(name: str, job: NewJob, after: tuple[str, ...] = ()) -> WorkflowNode:
    return WorkflowNode(name=name, job=job, after=after)


def _diamond(rng: random.Random, plan: Plan, root_delay: float) -> list[WorkflowNode]:
    """a -> (b, c) -> d, every job succeeding (c after one designed failure)."""
    spare = plan.kills + 1

    def job(task: str, payload: dict, attempts: int, delay: float | None = None) -> NewJob:
        return NewJob(task=task, payload=payload, max_attempts=attempts, delay=delay,
                      queue=rng.choice(QUEUES), tenant=TENANT, retry_policy=BACKOFF,
                      labels={"kind": "dag", "expect": "succeeded"})

    return [
        _node("a", job("sleep", {"seconds": 0.3}, spare, root_delay)),
        _node("b", job("sleep", {"seconds": round(rng.uniform(0.2, 1.0), 2)}, spare), ("a",)),
        _node("c", job("fail", {"times": 1}, 1 + spare), ("a",)),
        _node("d", job("echo", {"joined": True}, spare), ("b", "c")),
    ]


def _doomed_dag(rng: random.Random, plan: Plan, root_delay: float) -> list[WorkflowNode]:
    """a -> b (fails for good) -> c, and a -> d: c never runs (cancelled), d succeeds."""
    spare = plan.kills + 1

    def job(task: str, payload: dict, expect: str, delay: float | None = None) -> NewJob:
        return NewJob(task=task, payload=payload, max_attempts=spare, delay=delay,
                      queue=rng.choice(QUEUES), tenant=TENANT, retry_policy=BACKOFF,
                      labels={"kind": "dag", "expect": expect})

    return [
        _node("a", job("sleep", {"seconds": 0.2}, "succeeded", root_delay)),
        _node("b", job("fail", {"retryable": False, "message": "dag node fatal"}, "failed"),
              ("a",)),
        _node("c", job("noop", {}, "cancelled"), ("b",)),
        _node("d", job("echo", {"side": True}, "succeeded"), ("a",)),
    ]


async def submit_workload(store: PostgresStore, dispatch: RedisDispatch, plan: Plan,
                          rng: random.Random) -> Workload:
    """Create the whole workload (before any fault: nothing here is retried)."""
    kinds: Counter[str] = Counter()
    dag_jobs = 8 * plan.workflows
    names = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    singles = max(0, plan.jobs - dag_jobs)
    batch: list[NewJob] = []
    for i in range(singles):
        kind = rng.choices(names, weights)[0]
        if kind == "sleep" and kinds["sleep"] >= plan.sleepers:
            kind = "tick"
        batch.append(_job(rng, kind, plan, f"chaos-{i}"))
        kinds[kind] += 1
        if len(batch) == 1000:
            await submit(store, dispatch, batch)
            batch = []
    if batch:
        await submit(store, dispatch, batch)
    for w in range(plan.workflows):
        for shape, build in (("diamond", _diamond), ("doomed", _doomed_dag)):
            nodes = build(rng, plan, round(rng.uniform(0, plan.spread), 3))
            check_workflow({n.name: n.after for n in nodes})
            await submit_workflow(store, dispatch, TENANT, f"{shape}-{w}", nodes)
            kinds["dag"] += len(nodes)
    return Workload(sum(kinds.values()), dict(kinds))
