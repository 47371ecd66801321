"""taskflow_finish_and_start writes with generic plans under pinned planner settings
(migration 0009): nothing of that may outlive the call, and the outbox trigger its first
statement fires must still see each ending once. Against real PostgreSQL and Redis."""

from __future__ import annotations

from taskflow.adapters.postgres import _outcome_columns
from taskflow.adapters.sql import QUERIES
from taskflow.jobs import submit_workflow
from taskflow.models import NewJob, Outcome, WorkflowNode
from taskflow.states import JobState
from tests.helpers import outcome_of, start_claimed, submit_jobs
from tests.integration.outbox_helpers import outbox_rows

PINNED = ("plan_cache_mode", "enable_seqscan", "enable_hashjoin", "enable_mergejoin")
# Not the values the function pins (nor the pool's): a restore to anything else shows.
CALLERS = {"plan_cache_mode": "auto", "enable_seqscan": "on", "enable_hashjoin": "on",
           "enable_mergejoin": "on"}


async def _finish_in_caller_settings(stores, outcomes: list[Outcome], seats: int) -> list:
    """Call the function in a transaction with the caller's own planner settings, and
    check that it leaves them as it found them."""
    async with stores.store.pool.acquire() as conn, conn.transaction():
        for name, value in CALLERS.items():
            await conn.execute("SELECT set_config($1, $2, true)", name, value)
        rows = await conn.fetch(QUERIES["finish_and_start"], *_outcome_columns(outcomes),
                                ["default"], seats, "w", "p.")
        after = {name: await conn.fetchval("SELECT current_setting($1)", name)
                 for name in PINNED}
    assert after == CALLERS
    return rows


async def test_every_way_out_of_a_flush_restores_the_planner_settings(stores):
    nodes = [WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
             WorkflowNode(name="b", after=("a",), job=NewJob(task="noop", max_attempts=1)),
             WorkflowNode(name="f", job=NewJob(task="noop", max_attempts=1)),
             WorkflowNode(name="g", after=("f",), job=NewJob(task="noop", max_attempts=1))]
    _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
    [lone] = await submit_jobs(stores, {"task": "noop"})
    running = {j.id: j for j in await start_claimed(stores, 3)}
    assert set(running) == {ids["a"], ids["f"], lone}

    # Nobody waits on the job: the early way out.
    rows = await _finish_in_caller_settings(stores, [outcome_of(running[lone])], seats=1)
    assert [(r["id"], r["state"]) for r in rows] == [(lone, "succeeded")]
    # A release that starts its dependent.
    rows = await _finish_in_caller_settings(stores, [outcome_of(running[ids["a"]])], seats=1)
    assert {(r["id"], r["state"]) for r in rows} == {(ids["a"], "succeeded"),
                                                     (ids["b"], "running")}
    # A failure that cancels its dependent.
    rows = await _finish_in_caller_settings(
        stores, [outcome_of(running[ids["f"]], JobState.FAILED)], seats=1)
    assert {(r["id"], r["state"]) for r in rows} >= {(ids["f"], "failed"),
                                                     (ids["g"], "cancelled")}


async def test_the_outbox_sees_each_ending_of_a_flush_once(stores, outbox):
    """The trigger fires inside the flush's first statement, under its settings; its
    new-against-old comparison of the batch must still find every ending and no other."""
    await outbox.insert_subscription("default", ["job.succeeded", "job.failed"], None, None,
                                     "https://hooks.example/s", None)
    ids = await submit_jobs(stores, *[{"task": "noop"}] * 40)
    jobs = await start_claimed(stores, 40)
    outcomes = [outcome_of(j, JobState.FAILED if i % 4 == 0 else JobState.SUCCEEDED)
                for i, j in enumerate(jobs)]
    await _finish_in_caller_settings(stores, outcomes, seats=0)
    rows = await outbox_rows(outbox)
    assert sorted((r["job_id"], r["event"]) for r in rows) == sorted(
        (o.id, f"job.{o.state.value}") for o in outcomes)
    assert {r["job_id"] for r in rows} == set(ids)


async def test_a_release_that_passes_over_a_cancelled_dependent_writes_no_event_for_it(
        stores, outbox):
    """The release also updates dependents cancelled meanwhile (their count of pending
    upstreams), cancelled to cancelled: not an ending, so the trigger's comparison of new
    and old rows must leave it out (one job.cancelled for b, from its cancel)."""
    await outbox.insert_subscription("t", ["job.succeeded", "job.cancelled"], None, None,
                                     "https://hooks.example/s", None)
    nodes = [WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1)),
             WorkflowNode(name="b", after=("a",), job=NewJob(task="noop", max_attempts=1))]
    _, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
    assert await stores.store.cancel_waiting_job(ids["b"], "t") is not None
    [a] = await start_claimed(stores, 1)
    rows = await _finish_in_caller_settings(stores, [outcome_of(a)], seats=1)
    assert (ids["b"], "cancelled") in {(r["id"], r["state"]) for r in rows}  # passed over
    events = sorted((r["job_id"] == ids["a"], r["event"]) for r in await outbox_rows(outbox))
    assert events == [(False, "job.cancelled"), (True, "job.succeeded")]
