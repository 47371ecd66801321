"""Retry decisions: a pure function of (attempt, policy, error), tested without I/O."""

from __future__ import annotations

import random
from typing import Callable

from msgspec import Struct

from taskflow.config import RetryPolicy


class Retry(Struct, frozen=True):
    """Run the job again after ``delay`` seconds."""

    delay: float


class GiveUp(Struct, frozen=True):
    """Do not run the job again; ``reason`` says why."""

    reason: str


Decision = Retry | GiveUp

MAX_RETRY_DELAY = 366 * 86_400.0
"""No retry waits longer than a year, whatever a handler or a server's Retry-After asks."""


def backoff_delay(
    attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> float:
    """Delay before the attempt after ``attempt`` (1-based): capped exponential with jitter.

    ``min(max_delay, base_delay * factor ** (attempt - 1))``, then moved by a uniform
    ``+/- jitter`` fraction of itself (never below zero, never above ``max_delay``) so that
    jobs which failed together do not retry in lockstep.
    """
    exponent = max(0, attempt - 1)
    # Cap the exponent before the power so a large attempt count cannot overflow a float.
    raw = policy.base_delay * policy.factor ** min(exponent, 1000)
    delay = min(policy.max_delay, raw)
    if policy.jitter:
        delay += delay * policy.jitter * (2 * rand() - 1)
    return min(policy.max_delay, max(0.0, delay))


def decide(
    attempt: int,
    max_attempts: int,
    policy: RetryPolicy,
    *,
    retryable: bool = True,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What to do after attempt number ``attempt`` of a job failed.

    ``retryable=False`` (a :class:`~taskflow.NonRetryableError`, a rejected payload, an
    unknown task) gives up at once. ``retry_after`` (a handler's :class:`~taskflow.RetryAfter`)
    replaces the backoff delay but still counts against ``max_attempts``.
    """
    if not retryable:
        return GiveUp("not retryable")
    if attempt >= max_attempts:
        return GiveUp(f"retries exhausted after {attempt} attempt{'s' if attempt != 1 else ''}")
    if retry_after is not None:
        return Retry(min(MAX_RETRY_DELAY, max(0.0, retry_after)))
    return Retry(min(MAX_RETRY_DELAY, backoff_delay(attempt, policy, rand)))
