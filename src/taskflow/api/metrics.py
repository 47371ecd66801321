"""Prometheus metrics of the API process: request latency by method, route template and
status class (this app's own registry, so several apps can live in one test process), plus
the process-wide metrics of :mod:`taskflow.metrics` and :mod:`taskflow.stats` (jobs
submitted, auth failures, queue sizes; in ``taskflow dev`` the worker's too: one page).

Labels are bounded: the route is the template (``/tasks/{job_id:uuid}``, never an id, or
``unmatched``), the status a class (``2xx`` ... ``5xx``), the method one of the standard
ones or ``other``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from taskflow.metrics import page

# Submits take a millisecond or two when all is well; the buckets resolve that.
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    """The API's request metrics; :meth:`page` is what ``/metrics`` serves: this
    process's page, or with ``merged`` (one of several API processes) the sum of all of
    theirs, which the supervisor makes."""

    def __init__(self, merged: Callable[[], Awaitable[bytes]] | None = None) -> None:
        self.merged = merged
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "taskflow_api_request_duration_seconds", "HTTP request latency.",
            ["method", "route", "status"], buckets=_BUCKETS, registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], Any] = {}
        self.fast_submits = Counter(
            "taskflow_api_fast_submits", "POST /tasks requests the fast path saw, by outcome: "
            "served (it answered) or handed_over (something was unusual: the route "
            "answered); see api.fast_submit.", ["outcome"], registry=self.registry)
        self.waiters = Gauge(
            "taskflow_api_waiters", "Requests waiting for a job or workflow to change "
            "(wait= and event streams).", registry=self.registry)

    def exposition(self) -> bytes:
        """This process's page."""
        return page() + generate_latest(self.registry)

    async def page(self) -> bytes:
        if self.merged is not None:
            return await self.merged()
        return self.exposition()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware timing each request (route = the path template, so ids do not
        make new series)."""
        observe = self.observe

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                observe(scope["method"], scope.get("path_template") or "unmatched", status,
                        time.perf_counter() - start)

        return timed

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request's latency (the middleware's, and :mod:`taskflow.api.fastpath`'s)."""
        key = (method if method in _METHODS else "other", route, status // 100)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.latency.labels(key[0], key[1], f"{key[2]}xx")
        child.observe(seconds)
