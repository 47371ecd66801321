"""A worker's outcome flush that starts the dependents it releases (taskflow_finish_and_start,
Worker._seats_for): against real PostgreSQL and Redis."""

from __future__ import annotations

from taskflow.jobs import submit_workflow
from taskflow.models import Claim, NewJob, Outcome, WorkflowNode
from taskflow.states import JobState
from taskflow.worker.builtins import builtin_registry
from taskflow.worker.worker import Worker


def chain(*names: str, task: str = "noop") -> list[WorkflowNode]:
    return [WorkflowNode(name=n, after=(names[i - 1],) if i else (),
                         job=NewJob(task=task, max_attempts=1))
            for i, n in enumerate(names)]


async def _start_root(stores, name: str = "w"):
    """Claim and start the only ready job of the default queue."""
    claims = (await stores.dispatch.claim("default", 1, 10_000)).claims
    [root] = await stores.store.start_jobs(claims, name)
    return root


async def test_a_started_dependent_put_back_cancelled_cancels_its_own_dependents(
        stores, settings):
    """A flush that started b failed without knowing it committed (it did); b's cancel
    was requested meanwhile. Putting b back ends it cancelled, and c, blocked behind it,
    must be cancelled too, not left blocked for ever."""
    workflow, ids = await submit_workflow(stores.store, stores.dispatch, "t", "w",
                                          chain("a", "b", "c"))
    a = await _start_root(stores)
    done = Outcome(a.id, a.lease_token, JobState.SUCCEEDED, "succeeded", 0.0, result="1")
    _, started, _ = await stores.store.finish_and_start([done], ["default"], 1, "w", "p.")
    assert [j.id for j in started] == [ids["b"]]
    assert await stores.store.request_running_job_cancel(ids["b"], "t") is not None
    registry, outbound = builtin_registry(settings.outbound)
    worker = Worker(settings, stores.store, stores.dispatch, registry)
    worker._maybe_started.append(([a.id], "p."))
    await worker._return_unconfirmed_starts()
    jobs = {j.node: j for j in await stores.store.workflow_jobs(workflow.id)}
    assert jobs["b"].state is JobState.CANCELLED
    assert jobs["c"].state is JobState.CANCELLED
    await outbound.close()
