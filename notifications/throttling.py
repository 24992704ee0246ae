"""The rate limit per API client, NOTIFY_THROTTLE_RATE (e.g. "6000/minute"), enforced once
for the whole fleet in PostgreSQL (table api_rate_counter; outbox/sql.py, RATE_TAKE): every
API process on every host counts in the same rows, so four workers on three hosts allow the
rate, not twelve times it.

- An intake POST (a notification, or a batch: its number of notifications) is counted by the
  statement that enqueues it (ENQUEUE_COUNTED), so that it costs no round trip more; over the
  limit, that statement writes nothing and the service raises RateLimited.
- Every other API request costs 1, taken by ApiClientRateThrottle (DRF's throttle hook) with
  RATE_TAKE, a statement of its own, before the view runs.

Over the limit the answer is DRF's: 429, "Request was throttled. Expected available in N
seconds.", `Retry-After: N` (the seconds to the window's end). A request refused before it
reaches the database (a bad body, 400), or an Idempotency-Key replay, counts nothing.
"""

from __future__ import annotations

import functools
import re

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from outbox.store import RateLimit, take_rate

SCOPE = "api_client"
# DRF's rate syntax: the number, then the period by its first letter ("100/minute", "5/s").
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smhd])[a-z]*\s*$", re.IGNORECASE)
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A limit is counted in one row per this much of it, up to NOTIFY_THROTTLE_SHARDS rows. One row
# is exact, but one client's requests then commit one after another: at 32 concurrent single
# POSTs of one client, 0.84 of the rate without a limit on one row, 0.92 to 0.99 on 8 (bench
# ingest_throttled_vs_plain). Several rows may let through the requests in flight on the
# others when the limit is reached (tens at most), which matters only for a small limit, and a
# small limit is never fast enough to contend: below 2,000 per window, one row.
PER_SHARD = 1000


@functools.lru_cache(maxsize=16)
def parse_rate(text: str, shards: int = 1) -> RateLimit:
    """"6000/minute" -> RateLimit(6000, 60, min(shards, 6)): counted in one row per PER_SHARD
    of the limit, at most `shards`. Raises ImproperlyConfigured if `text` is not a rate."""
    match = _RATE.match(text)
    if match is None:
        raise ImproperlyConfigured(f"NOTIFY_THROTTLE_RATE {text!r}: expected N/second, N/minute, N/hour, N/day or off")
    if shards < 1:
        raise ImproperlyConfigured(f"NOTIFY_THROTTLE_SHARDS must be at least 1, got {shards}")
    limit = int(match.group(1))
    return RateLimit(limit=limit, period=_PERIODS[match.group(2).lower()], shards=max(1, min(shards, limit // PER_SHARD)))


def configured_rate() -> RateLimit | None:
    """The rate limit of every API client, or None when it is off (NOTIFY_THROTTLE_RATE=off)."""
    text = api_settings.DEFAULT_THROTTLE_RATES.get(SCOPE)
    if text is None:
        return None
    return parse_rate(text, int(getattr(settings, "NOTIFY_THROTTLE_SHARDS", 1)))


class ApiClientRateThrottle(BaseThrottle):
    """Counts every API request of a client but the intake's POSTs (which ENQUEUE_COUNTED
    counts) against the client's fleet-wide rate; a refused one answers 429 with Retry-After."""

    def __init__(self) -> None:
        self.retry_after: int | None = None

    def allow_request(self, request, view) -> bool:
        client = request.user
        rate = configured_rate()
        if rate is None or client is None or not getattr(client, "pk", None):
            return True  # no limit, or no client: 401 comes from the permission check
        if request.method == "POST" and getattr(view, "rate_counted_by_enqueue", False):
            return True
        self.retry_after = take_rate(client_id=client.pk, rate=rate)
        return self.retry_after is None

    def wait(self) -> float | None:
        return self.retry_after
