import pytest

from taskflow.config import RetryPolicy
from taskflow.retry import GiveUp, Retry, backoff_delay, decide

POLICY = RetryPolicy(max_attempts=5, base_delay=1.0, factor=2.0, max_delay=10.0, jitter=0.0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0),
                                                (5, 10.0), (50, 10.0)])
def test_backoff_is_exponential_and_capped(attempt, delay):
    assert backoff_delay(attempt, POLICY) == delay


def test_huge_attempt_numbers_do_not_overflow():
    assert backoff_delay(10**9, POLICY) == 10.0


def test_jitter_spreads_within_bounds():
    policy = RetryPolicy(base_delay=4.0, factor=1.0, max_delay=100.0, jitter=0.5)
    assert backoff_delay(1, policy, rand=lambda: 0.0) == 2.0
    assert backoff_delay(1, policy, rand=lambda: 1.0) == 6.0
    assert backoff_delay(1, policy, rand=lambda: 0.5) == 4.0


def test_jitter_never_exceeds_the_cap():
    policy = RetryPolicy(base_delay=10.0, max_delay=10.0, jitter=1.0)
    assert backoff_delay(3, policy, rand=lambda: 1.0) == 10.0


def test_retries_until_attempts_are_exhausted():
    assert decide(1, 3, POLICY) == Retry(1.0)
    assert decide(2, 3, POLICY) == Retry(2.0)
    decision = decide(3, 3, POLICY)
    assert isinstance(decision, GiveUp) and "after 3 attempts" in decision.reason


def test_non_retryable_gives_up_at_once():
    assert decide(1, 10, POLICY, retryable=False) == GiveUp("not retryable")


def test_retry_after_replaces_the_backoff_but_still_counts():
    assert decide(1, 3, POLICY, retry_after=42.0) == Retry(42.0)
    assert isinstance(decide(3, 3, POLICY, retry_after=42.0), GiveUp)
    assert decide(1, 3, POLICY, retry_after=-5) == Retry(0.0)
