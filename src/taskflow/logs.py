"""Logging: one JSON object a line (``log.format = "json"``, production) or readable text
(``"text"``, development), with the job being worked on taken from context variables.

The worker binds ``job_id``, ``task``, ``queue``, ``attempt`` and ``tenant`` in the
asyncio task that runs a job, and ``worker`` for the whole worker; the API binds
``tenant`` for a request. Every record logged meanwhile carries them -- the handler's own
logs included -- without any call site formatting them into its message.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

FIELDS = ("job_id", "task", "queue", "attempt", "worker", "tenant")
_VARS: dict[str, contextvars.ContextVar[Any]] = {
    name: contextvars.ContextVar(f"taskflow_log_{name}", default=None) for name in FIELDS
}


# The job a task runs, all its fields in one variable: the worker binds one per job, and
# each ContextVar.set copies the context's mapping (five sets cost a no-op job ~3 us).
_JOB_FIELDS = ("job_id", "task", "queue", "attempt", "tenant")
_JOB: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "taskflow_log_job", default=None)


def bind(**fields: Any) -> None:
    """Set context fields for the current task (and the tasks it starts from now on)."""
    for name, value in fields.items():
        _VARS[name].set(value)


def bind_job(job_id: Any, task: str, queue: str, attempt: int, tenant: str) -> None:
    """The fields of the job the current task runs (the worker's hot path); they stand
    over what :func:`bind` set for the same names."""
    _JOB.set((job_id, task, queue, attempt, tenant))


def context() -> dict[str, Any]:
    """The context fields that are set."""
    job = dict(zip(_JOB_FIELDS, _JOB.get() or ()))
    out = {}
    for name, var in _VARS.items():  # in FIELDS order; the job's value before a bound one
        value = job.get(name)
        if value is None:
            value = var.get()
        if value is not None:
            out[name] = value
    return out


class _ContextFilter(logging.Filter):
    """Copies the context fields onto each record (``record.taskflow``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.taskflow = context()
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", <context fields>, "exc_info"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "taskflow", None) or {})
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the context fields at the end in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "taskflow", None)
        if not fields:
            return line
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        head, sep, tail = line.partition("\n")  # keep a traceback below the bracket
        return f"{head} [{extra}]{sep}{tail}"


def configure(level: str, fmt: str) -> None:
    """Root logging for a role: one stderr handler with the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
