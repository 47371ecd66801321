"""taskflow: a distributed task scheduler."""

from taskflow.worker.registry import JobContext, NonRetryableError, RetryAfter, task

__all__ = ["JobContext", "NonRetryableError", "RetryAfter", "task"]
__version__ = "0.1.0"
