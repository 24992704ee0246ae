"""Reading a provider's "come back later" answer (Retry-After) into seconds.

    from channels.retry_after import parse_retry_after
    raise TransientChannelError("rate limited", retry_after=parse_retry_after(response.headers.get("Retry-After")))

HTTP's Retry-After (RFC 9110, section 10.2.3) is either a number of seconds ("120") or an
HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT"). Some providers send fractional seconds ("1.5");
those are accepted too. Anything else (missing, empty, garbage, a negative number) gives None,
which the retry policy reads as "the provider did not say". A date in the past gives 0.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str | bytes | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait according to a Retry-After header value, or None if it says nothing usable.

    `now` (an aware datetime; default: the current time) is what an HTTP-date is measured from.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
