"""Handlers by task name, the context they receive, and the errors they may raise."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import msgspec


class NonRetryableError(Exception):
    """Raise from a handler to fail the job now, whatever attempts are left."""


class RetryAfter(Exception):
    """Raise from a handler to retry after ``delay`` seconds instead of the backoff delay.
    The attempt still counts against ``max_attempts``."""

    def __init__(self, delay: float, message: str = "") -> None:
        super().__init__(message or f"retry requested in {delay}s")
        self.delay = delay


class JobContext:
    """What a handler gets: the job's identity, its payload, and a cancellation signal."""

    __slots__ = ("job_id", "task", "queue", "attempt", "max_attempts", "tenant", "payload",
                 "upstream_results", "cancelled")

    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        task: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        tenant: str,
        payload: Any,
        upstream_results: dict[str, Any] | None = None,
    ) -> None:
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.tenant = tenant
        self.payload = payload
        self.upstream_results = upstream_results or {}
        # Set when the job is to stop (cancelled, timed out, lease lost, shutdown): sync
        # handlers, which cannot be interrupted, should poll it.
        self.cancelled = asyncio.Event() if _in_loop() else None


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Handler(msgspec.Struct, frozen=True):
    """A registered handler. ``payload_type``, when set, validates and converts the payload
    (a payload that does not fit fails the attempt without retry)."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    payload_type: Any = None


class Registry:
    """Task name -> handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(
        self, name: str, fn: Callable[..., Any], *, payload_type: Any = None
    ) -> Handler:
        if name in self._handlers and self._handlers[name].fn is not fn:
            raise ValueError(f"task {name!r} is registered twice")
        handler = Handler(name, fn, inspect.iscoroutinefunction(fn), payload_type)
        self._handlers[name] = handler
        return handler

    def task(
        self, name: str | None = None, *, payload: Any = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@registry.task("resize")`` registers a handler under that name (the
        function's name by default). Handlers take a :class:`JobContext`."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name or fn.__name__, fn, payload_type=payload)
            return fn

        return decorate

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def merged(self, other: Registry) -> Registry:
        out = Registry()
        out._handlers = {**self._handlers, **other._handlers}
        return out


# Handlers registered with the module-level decorator ``@taskflow.task``.
default_registry = Registry()
task = default_registry.task


def import_handler_modules(modules: Iterable[str]) -> None:
    """Import the modules named in settings so their ``@task`` decorators run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(
                f"worker.handler_modules names {module!r}, which cannot be imported: {exc}"
            ) from exc
