"""Handlers a worker process imports through worker.handler_modules (see the e2e tests)."""

import taskflow


@taskflow.task("sample.add")
async def add(ctx: taskflow.JobContext) -> int:
    return ctx.payload["a"] + ctx.payload["b"]


@taskflow.task("sample.sync_upper")
def sync_upper(ctx: taskflow.JobContext) -> str:
    return ctx.payload["text"].upper()


@taskflow.task("sample.retry_later")
async def retry_later(ctx: taskflow.JobContext) -> int:
    if ctx.attempt == 1:
        raise taskflow.RetryAfter(0.2, "not yet")
    return ctx.attempt


@taskflow.task("sample.collect")
async def collect(ctx: taskflow.JobContext) -> dict:
    """Sums the `i` of its upstream results (fan-in tests)."""
    results = ctx.upstream_results.values()
    return {"n": len(ctx.upstream_results), "sum": sum(r["i"] for r in results)}


@taskflow.task("sample.crash")
async def crash(ctx: taskflow.JobContext) -> None:
    """A poison job: kills the worker process running it, every time."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
