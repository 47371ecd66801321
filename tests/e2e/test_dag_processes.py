"""Fan-in across two real worker processes."""

from __future__ import annotations

import signal
import subprocess

from taskflow.jobs import submit_workflow
from taskflow.models import NewJob, WorkflowNode
from tests.e2e.processes import Role
from tests.helpers import wait_for_states, wait_until

HANDLERS = {"TASKFLOW_WORKER__HANDLER_MODULES": '["tests.e2e.sample_handlers"]'}


async def test_fan_in_of_1000_parents_finishing_on_two_workers_runs_the_child_once(
        stores, servers, tmp_path):
    parents = [WorkflowNode(name=f"p{i}", job=NewJob(task="echo", max_attempts=1,
                                                     payload={"i": i}))
               for i in range(1000)]
    child = WorkflowNode(name="child", after=tuple(p.name for p in parents),
                         job=NewJob(task="sample.collect", max_attempts=1))
    workers = [Role(servers, ["work", "-c", "50"], tmp_path / f"w{i}.log", **HANDLERS)
               for i in range(2)]
    try:
        # Both serving before the jobs exist: on a loaded machine a worker that started
        # first could otherwise drain every parent alone.
        await wait_until(lambda: _serving(workers), timeout=30)
        workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "fan-in",
                                              [*parents, child])
        jobs = await wait_for_states(stores, list(ids.values()), {"succeeded"}, timeout=60)
    finally:
        for w in workers:
            w.signal(signal.SIGTERM)
        codes = []
        for w in workers:
            try:
                codes.append(w.wait())
            except subprocess.TimeoutExpired:  # never leave a worker behind for later tests
                w.stop()
                codes.append(None)
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    assert len({j.worker for j in jobs if j.node != "child"}) == 2  # both took parents
    [child_job] = [j for j in jobs if j.node == "child"]
    assert child_job.result == {"n": 1000, "sum": sum(range(1000))}
    assert child_job.attempts == 1 and child_job.pending_upstreams == 0
    attempts = await stores.store.job_attempts(child_job.id)
    assert [a.outcome for a in attempts] == ["succeeded"]


async def _serving(workers: list[Role]) -> bool:
    return all(" serving " in w.output() for w in workers)
