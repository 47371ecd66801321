"""``python -m benchmarks.without_new_metrics <role> ...``: a taskflow role with the
metrics and log context of issue 8 turned into no-ops, for bench_observability to compare
against the same role as shipped. Not for production."""

from __future__ import annotations

import asyncio
from typing import Any


class _Noop:
    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def inc(self, *args: Any) -> None:
        pass

    def observe(self, *args: Any) -> None:
        pass


def strip() -> None:
    from taskflow import cli, logs, metrics

    for name in ("JOB_WAIT", "JOB_END_TO_END", "JOB_RETRIES", "DEAD_LETTERS", "AUTH_FAILURES"):
        setattr(metrics, name, _Noop())
    logs.bind = lambda **fields: None
    logs.bind_job = lambda *fields: None

    async def nothing() -> None:
        pass

    cli._cluster_stats = lambda *args: asyncio.ensure_future(nothing())


if __name__ == "__main__":
    strip()
    from taskflow.cli import main

    main()
