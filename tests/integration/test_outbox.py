"""The transactional outbox: rows written by the statement that ends a job, only for
events someone consumes (migration 0003's triggers), against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio

from taskflow import jobs
from taskflow.adapters.outbox import DEAD_LETTERS
from taskflow.jobs import submit, submit_workflow
from taskflow.models import Claim, JobNotify, NewJob, WorkflowNode
from tests.helpers import running_worker, submit_jobs, wait_for_states
from tests.integration.outbox_helpers import outbox_rows

DONE = {"succeeded", "failed", "cancelled"}
FAIL = {"task": "fail", "payload": {"message": "boom"}, "max_attempts": 2}


async def test_no_consumer_writes_nothing(stores, settings, outbox):
    ids = await submit_jobs(stores, {"task": "noop"}, FAIL)
    async with running_worker(stores, settings):
        await wait_for_states(stores, ids, DONE)
    assert await outbox_rows(outbox) == []


async def test_dead_letter_written_once_by_the_final_failure_only(stores, settings, outbox):
    await outbox.register_sink(DEAD_LETTERS, "kafka")
    ok, bad = await submit_jobs(stores, {"task": "noop"}, {**FAIL, "labels": {"k": "v"}})
    async with running_worker(stores, settings):
        await wait_for_states(stores, [ok, bad], DONE)
    rows = await outbox_rows(outbox)
    assert [(r["event"], r["channel"], r["job_id"]) for r in rows] == [
        ("job.failed", "dead_letter", bad)]
    body = rows[0]["body"]
    assert body["id"] == str(bad) and body["state"] == "failed"
    assert body["attempts"] == 2 and body["max_attempts"] == 2
    assert "boom" in body["error"] and body["labels"] == {"k": "v"}
    assert body["worker"] and body["started_at"] and body["finished_at"]


async def test_job_notify_matches_its_events(stores, settings, outbox):
    notify = JobNotify(on=("succeeded", "failed"), webhook="https://hooks.example/x",
                       email=("a@example.com", "b@example.com"))
    result = await submit(stores.store, stores.dispatch, [
        NewJob(task="noop", max_attempts=1, notify=notify),
        NewJob(task="fail", max_attempts=1, notify=JobNotify(webhook="https://h.example/")),
        NewJob(task="noop", max_attempts=1, notify=JobNotify(webhook="https://h.example/")),
    ])
    ids = [e.id for e in result.created]
    async with running_worker(stores, settings):
        await wait_for_states(stores, ids, DONE)
    got = sorted((r["job_id"] == ids[0], r["event"], r["channel"], r["target"])
                 for r in await outbox_rows(outbox))
    assert got == sorted([
        (True, "job.succeeded", "webhook", "https://hooks.example/x"),
        (True, "job.succeeded", "email", "a@example.com,b@example.com"),
        (False, "job.failed", "webhook", "https://h.example/"),
    ])


async def test_subscription_filters_by_event_queue_and_task(stores, settings, outbox):
    sub = await outbox.insert_subscription("default", ["job.failed", "job.succeeded"],
                                           "q1", None, "https://hooks.example/s", None)
    await outbox.insert_subscription("other", ["job.failed"], None, None, None, ["x@y.example"])
    ids = await submit_jobs(stores, {"task": "noop", "queue": "q1"},
                            {**FAIL, "queue": "q1"}, {"task": "noop", "queue": "q2"})
    async with running_worker(stores, settings, queues=["q1", "q2"]):
        await wait_for_states(stores, ids, DONE)
    rows = await outbox_rows(outbox)
    assert sorted((r["job_id"], r["event"]) for r in rows) == sorted(
        [(ids[0], "job.succeeded"), (ids[1], "job.failed")])
    assert {r["subscription_id"] for r in rows} == {sub.id}


async def test_rescue_of_the_last_attempt_is_a_dead_letter(stores, settings, outbox):
    await outbox.register_sink(DEAD_LETTERS, "kafka")
    [job_id] = await submit_jobs(stores, {"task": "noop", "max_attempts": 1})
    assert len(await stores.store.start_jobs([Claim(str(job_id), "tok")], "w1")) == 1
    await stores.store.rescue_jobs([Claim(str(job_id), "tok")])
    rows = await outbox_rows(outbox)
    assert [(r["job_id"], r["event"], r["body"]["worker"]) for r in rows] == [
        (job_id, "job.failed", "w1")]


async def test_cancel_and_dag_cascade_are_events(stores, settings, outbox):
    await outbox.insert_subscription("default", ["job.cancelled"], None, None,
                                     "https://hooks.example/c", None)
    [waiting] = await submit_jobs(stores, {"task": "noop", "delay": 60})
    await jobs.cancel(stores.store, stores.dispatch, waiting, "default")
    [up] = await submit_jobs(stores, {**FAIL, "max_attempts": 1})
    [down] = await submit_jobs(stores, {"task": "noop", "depends_on": (up,)})
    async with running_worker(stores, settings):
        await wait_for_states(stores, [up, down], DONE)
    rows = await outbox_rows(outbox)
    assert sorted(r["job_id"] for r in rows) == sorted([waiting, down])
    assert {r["event"] for r in rows} == {"job.cancelled"}


async def test_rolled_back_state_change_leaves_no_row(stores, settings, outbox):
    await outbox.insert_subscription("default", ["job.cancelled"], None, None,
                                     "https://hooks.example/c", None)
    [job_id] = await submit_jobs(stores, {"task": "noop", "delay": 60})
    async with stores.store.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE jobs SET state = 'cancelled', finished_at = now() "
                           "WHERE id = $1", job_id)
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1
        await tx.rollback()
    assert await outbox_rows(outbox) == []


async def test_workflow_completion_is_one_event(stores, settings, outbox):
    await outbox.insert_subscription("t1", ["workflow.succeeded", "workflow.failed"], None,
                                     None, "https://hooks.example/w", None)
    nodes = [WorkflowNode(name=n, job=NewJob(task="noop", max_attempts=1)) for n in "abcdef"]
    nodes.append(WorkflowNode(name="z", after=tuple("abcdef"),
                              job=NewJob(task="fail", max_attempts=1)))
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t1", "w", nodes)
    async with running_worker(stores, settings):
        await wait_for_states(stores, list(ids.values()), DONE)
    await asyncio.sleep(0.2)
    rows = await outbox_rows(outbox)
    assert [(r["event"], r["workflow_id"], r["job_id"]) for r in rows] == [
        ("workflow.failed", workflow.id, None)]
    assert rows[0]["body"]["jobs"] == 7 and rows[0]["body"]["state"] == "failed"


async def test_outbox_schema_maps_onto_the_records(stores, outbox):
    from taskflow.adapters.outbox import NotificationRecord, Subscription

    async def columns(table: str) -> set[str]:
        rows = await outbox.pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)
        return {r["column_name"] for r in rows}

    assert await columns("subscriptions") == set(Subscription.__struct_fields__)
    assert set(NotificationRecord.__struct_fields__) <= await columns("outbox")


async def test_cancelling_a_workflow_is_one_workflow_event_and_one_per_job(
        stores, settings, outbox):
    await outbox.insert_subscription("t2", ["workflow.cancelled", "job.cancelled"], None,
                                     None, None, ["ops@example.com"])
    nodes = [WorkflowNode(name="a", job=NewJob(task="noop", max_attempts=1, delay=60)),
             WorkflowNode(name="b", after=("a",), job=NewJob(task="noop", max_attempts=1))]
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t2", "w", nodes)
    assert await jobs.cancel_workflow(stores.store, stores.dispatch, workflow.id) == 0
    rows = await outbox_rows(outbox)
    assert sorted((r["event"], r["job_id"]) for r in rows) == sorted([
        ("job.cancelled", ids["a"]), ("job.cancelled", ids["b"]),
        ("workflow.cancelled", None)])
    assert {r["channel"] for r in rows} == {"email"}
