"""What to do after a delivery attempt: pure functions of the attempt, the policy and the
error, tested without I/O."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from msgspec import Struct

from taskflow.config import NotifyRetry

MAX_RETRY_AFTER = 86_400.0
"""A receiver's Retry-After is honoured up to a day."""


class Attempted(Struct, frozen=True):
    """How one delivery attempt went, as a sink reports it."""

    ok: bool
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None  # the receiver's Retry-After, in seconds
    target: str | None = None  # for a retry: the row's target from now on (fewer recipients)

    @classmethod
    def delivered(cls) -> Attempted:
        return cls(True)

    @classmethod
    def retry(cls, error: str, retry_after: float | None = None,
              target: str | None = None) -> Attempted:
        return cls(False, error, True, retry_after, target)

    @classmethod
    def give_up(cls, error: str) -> Attempted:
        return cls(False, error, False)


class Decision(Struct, frozen=True):
    outcome: str  # delivered | retried | failed
    delay: float = 0.0


def retry_delay(attempt: int, policy: NotifyRetry, rng: random.Random | None = None) -> float:
    """Backoff before attempt ``attempt + 1``: exponential, capped, with jitter."""
    delay = min(policy.max_delay, policy.base_delay * policy.factor ** max(0, attempt - 1))
    if policy.jitter:
        delay += delay * policy.jitter * (2 * (rng or random).random() - 1)
    return max(0.0, delay)


def decide(result: Attempted, attempt: int, max_attempts: int | None, policy: NotifyRetry,
           rng: random.Random | None = None) -> Decision:
    """``max_attempts`` None: never give up (dead letters must not be lost)."""
    if result.ok:
        return Decision("delivered")
    if not result.retryable or (max_attempts is not None and attempt >= max_attempts):
        return Decision("failed")
    delay = retry_delay(attempt, policy, rng)
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
    return Decision("retried", delay)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", which int() and float() refuse
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
