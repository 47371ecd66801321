"""What list and workflow views read from PostgreSQL: payload and result only when asked
for; and the bounded count of a tenant's unfinished jobs per queue."""

from __future__ import annotations

from taskflow.adapters.postgres import JobQuery
from taskflow.jobs import submit, submit_workflow
from taskflow.models import NewJob, WorkflowNode


async def test_list_reads_payload_and_result_only_when_asked(stores):
    job = NewJob(task="echo", max_attempts=1, payload={"big": "x" * 10_000}, tenant="a")
    await submit(stores.store, stores.dispatch, [job])
    await stores.store.pool.execute(
        "UPDATE jobs SET result = '{\"r\": 1}', state = 'succeeded', finished_at = now() "
        "WHERE id = $1", job.id)
    [plain] = await stores.store.list_jobs("a", JobQuery(limit=10))
    assert plain.id == job.id and plain.payload is None and plain.result is None
    assert plain.task == "echo" and plain.state.value == "succeeded"
    [full] = await stores.store.list_jobs(
        "a", JobQuery(limit=10, with_payload=True, with_result=True))
    assert full.payload == {"big": "x" * 10_000} and full.result == {"r": 1}
    [half] = await stores.store.list_jobs("a", JobQuery(limit=10, with_result=True))
    assert half.payload is None and half.result == {"r": 1}


async def test_workflow_members_read_payload_and_result_only_when_asked(stores):
    nodes = [WorkflowNode(name="a", job=NewJob(task="echo", max_attempts=1,
                                               payload={"n": 1}))]
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w", nodes)
    await stores.store.pool.execute("UPDATE jobs SET result = '[1]' WHERE id = $1", ids["a"])
    [plain] = await stores.store.workflow_members(workflow.id)
    assert plain.node == "a" and plain.payload is None and plain.result is None
    [full] = await stores.store.workflow_members(workflow.id, with_payload=True,
                                                 with_result=True)
    assert full.payload == {"n": 1} and full.result == [1]


async def test_active_jobs_are_counted_per_tenant_and_queue_up_to_the_bound(stores):
    jobs = ([NewJob(task="noop", max_attempts=1, tenant="a", queue="q") for _ in range(7)]
            + [NewJob(task="noop", max_attempts=1, tenant="a", queue="r")]
            + [NewJob(task="noop", max_attempts=1, tenant="b", queue="q")])
    await submit(stores.store, stores.dispatch, jobs)
    await stores.store.pool.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id = $1", jobs[0].id)
    keys = [("a", "q"), ("a", "r"), ("b", "q"), ("c", "q")]
    assert await stores.store.count_active_jobs(keys, 100) == {
        ("a", "q"): 6, ("a", "r"): 1, ("b", "q"): 1, ("c", "q"): 0}
    assert (await stores.store.count_active_jobs(keys, 4))[("a", "q")] == 4  # bounded
