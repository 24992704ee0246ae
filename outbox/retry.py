"""When to try a failed send again: a small pure policy, testable without a database."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from django.conf import settings


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, for at most `max_attempts` attempts.

    Attempt n (1-based) that failed transiently is retried after a delay drawn uniformly from
    [0, min(cap, base * 2**(n-1))] ("full jitter": spreads a burst of failures out instead of
    retrying them in lockstep). A provider's Retry-After raises the delay to at least that.
    """

    base_seconds: float
    cap_seconds: float
    max_attempts: int
    # A provider's Retry-After is obeyed up to this long (a broken or hostile endpoint could
    # otherwise push a retry out for years).
    max_retry_after_seconds: float = 24 * 3600
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_settings(cls) -> "RetryPolicy":
        conf = settings.OUTBOX
        return cls(conf["RETRY_BASE_SECONDS"], conf["RETRY_CAP_SECONDS"], conf["MAX_ATTEMPTS"])

    def ceiling(self, attempt: int) -> float:
        """The largest delay after failed attempt `attempt`."""
        return min(self.cap_seconds, self.base_seconds * 2 ** max(attempt - 1, 0))

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None when attempts are exhausted."""
        if attempt >= self.max_attempts:
            return None
        delay = self.rng.uniform(0, self.ceiling(attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_seconds))
        return delay
