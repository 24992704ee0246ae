"""How the fleet may use a channel: its rate budgets, its circuit breaker and its fallbacks.

Keys of a channel in the channels file, beside `backend` and `options`, all optional:

    [channels.sms]
    backend = "channels.backends.twilio_sms.TwilioSmsChannel"
    rate_limit = "20/s"                 # the whole fleet, every host together; also "/m", "/h"
    recipient_rate_limit = "1/s"        # per recipient (a Slack channel, a phone number)
    circuit_breaker = { failures = 5, cool_down = 30 }
    fallback = ["sms-backup"]           # channels to try, in order, when this one cannot deliver

A rate is a token bucket: it refills at the rate, and holds at most half a second's worth (at
least one token), so "20/s" allows bursts of 10 and "1/s" none. (A whole second's worth, the
provider's own bucket, let claims made ahead of their sends arrive bunched: 1.3% of 429s in
the benchmark; half a second's, none.) The dispatchers enforce it
together, through PostgreSQL (outbox/sql.py). Parsing and checking happen here; a bad value
is a ChannelConfigurationError naming the channel.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ChannelConfigurationError

POLICY_KEYS = ("rate_limit", "recipient_rate_limit", "circuit_breaker", "fallback")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


@dataclass(frozen=True)
class Rate:
    """A token bucket: `per_second` refill, `burst` tokens at most. `text` as configured."""

    per_second: float
    burst: float
    text: str

    @classmethod
    def parse(cls, value: object) -> "Rate":
        match = _RATE.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"{value!r} is not a rate such as \"20/s\", \"600/m\" or \"100/h\"")
        count, unit = float(match.group(1)), match.group(2)
        per_second = count / _UNIT_SECONDS[unit]
        if not (math.isfinite(per_second) and per_second > 0):
            raise ValueError(f"{value!r}: a rate must be above 0")
        return cls(per_second=per_second, burst=max(1.0, per_second / 2), text=value.strip())


@dataclass(frozen=True)
class CircuitBreaker:
    """After `failures` consecutive transient failures, no send for `cool_down` seconds; then
    one probe: its success closes the breaker, its failure opens it again."""

    failures: int
    cool_down: float


@dataclass(frozen=True)
class ChannelPolicy:
    """A channel's rate budgets, circuit breaker and fallbacks (all optional)."""

    rate_limit: Rate | None = None
    recipient_rate_limit: Rate | None = None
    circuit_breaker: CircuitBreaker | None = None
    fallback: tuple[str, ...] = field(default_factory=tuple)

    @property
    def governs_claims(self) -> bool:
        """Whether claims of the channel go through its shared state (a budget or a breaker)."""
        return any(x is not None for x in (self.rate_limit, self.recipient_rate_limit, self.circuit_breaker))

    def describe(self) -> dict[str, Any]:
        breaker = self.circuit_breaker
        return {
            "rate_limit": self.rate_limit.text if self.rate_limit else None,
            "recipient_rate_limit": self.recipient_rate_limit.text if self.recipient_rate_limit else None,
            "circuit_breaker": {"failures": breaker.failures, "cool_down": breaker.cool_down} if breaker else None,
            "fallback": list(self.fallback),
        }


def parse_policy(name: str, entry: Mapping[str, Any]) -> ChannelPolicy:
    """The policy of channel `name` from its settings entry (NOTIFICATION_CHANNELS' shape)."""
    try:
        rate = entry.get("RATE_LIMIT")
        recipient_rate = entry.get("RECIPIENT_RATE_LIMIT")
        return ChannelPolicy(
            rate_limit=Rate.parse(rate) if rate is not None else None,
            recipient_rate_limit=Rate.parse(recipient_rate) if recipient_rate is not None else None,
            circuit_breaker=_breaker(entry.get("CIRCUIT_BREAKER")),
            fallback=_fallback(entry.get("FALLBACK")),
        )
    except ValueError as exc:
        raise ChannelConfigurationError(f"channel {name!r}: {exc}") from None


def check_fallbacks(kinds: Mapping[str, str], policies: Mapping[str, ChannelPolicy]) -> None:
    """Every fallback names a configured channel of the same kind, and no chain of fallbacks
    comes back to where it started. `kinds`: channel name -> its kind."""
    for name, policy in policies.items():
        for other in policy.fallback:
            if other == name:
                raise ChannelConfigurationError(f"channel {name!r}: falls back to itself")
            if other not in kinds:
                raise ChannelConfigurationError(f"channel {name!r}: fallback {other!r} is not a configured channel")
            if kinds[other] != kinds[name]:
                raise ChannelConfigurationError(
                    f"channel {name!r}: fallback {other!r} is of kind {kinds[other]!r}, not {kinds[name]!r}: "
                    "it could not take the same recipients")
    for start in policies:
        _no_cycle(start, policies, path=(start,))


def _no_cycle(name: str, policies: Mapping[str, ChannelPolicy], path: tuple[str, ...]) -> None:
    for other in policies[name].fallback:
        if other in path:
            cycle = " -> ".join((*path[path.index(other):], other))
            raise ChannelConfigurationError(f"channel {path[0]!r}: its fallbacks form a cycle ({cycle})")
        if other in policies:
            _no_cycle(other, policies, (*path, other))


def _breaker(value: object) -> CircuitBreaker | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"failures", "cool_down"}:
        raise ValueError("circuit_breaker must be a table { failures = N, cool_down = SECONDS }")
    failures, cool_down = value.get("failures", 5), value.get("cool_down", 30)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        raise ValueError("circuit_breaker.failures must be a whole number of at least 1")
    if isinstance(cool_down, bool) or not isinstance(cool_down, (int, float)) or not 0 < cool_down <= 86400:
        raise ValueError("circuit_breaker.cool_down must be a number of seconds above 0 (at most a day)")
    return CircuitBreaker(failures=failures, cool_down=float(cool_down))


def _fallback(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError("fallback must be a list of channel names")
    if len(set(value)) != len(value):
        raise ValueError("fallback names a channel twice")
    return tuple(value)
