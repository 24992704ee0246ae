"""RetryPolicy: a pure object, tested without a database."""

import random

from outbox.retry import RetryPolicy


def policy(**kwargs) -> RetryPolicy:
    defaults = {"base_seconds": 2.0, "cap_seconds": 60.0, "max_attempts": 5, "rng": random.Random(7)}
    return RetryPolicy(**{**defaults, **kwargs})


def test_ceiling_doubles_per_attempt_up_to_the_cap():
    p = policy()
    assert [p.ceiling(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def test_delays_are_full_jitter_within_the_ceiling():
    p = policy(max_attempts=100)
    for attempt in range(1, 10):
        delays = [p.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= p.ceiling(attempt) for d in delays)
        # full jitter spreads over the whole range, not around one value
        assert min(delays) < 0.25 * p.ceiling(attempt) < 0.75 * p.ceiling(attempt) < max(delays)


def test_no_retry_once_attempts_are_exhausted():
    p = policy(max_attempts=3)
    assert p.delay(1) is not None
    assert p.delay(2) is not None
    assert p.delay(3) is None
    assert p.delay(4) is None


def test_retry_after_is_a_floor():
    p = policy(base_seconds=1.0, cap_seconds=2.0)
    assert all(p.delay(1, retry_after=30) >= 30 for _ in range(50))
    # a Retry-After shorter than the jittered delay does not shorten it below zero
    assert all(p.delay(3, retry_after=0) >= 0 for _ in range(50))


def test_retry_after_is_obeyed_only_up_to_a_day():
    p = policy()
    assert p.delay(1, retry_after=10 * 365 * 24 * 3600) == 24 * 3600
