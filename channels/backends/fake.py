"""A fake channel for tests and benchmarks: configurable latency and failure rates.

Options:
- `latency_ms`: how long each send takes (sleeps, so sends overlap on dispatcher threads).
- `transient_rate`, `permanent_rate`: probability that a send raises that kind of error.
- `fail_first_attempts`: attempts 1..N fail transiently, later ones succeed (deterministic).
- `fail_first_sends`: the first N sends of each process fail transiently, whatever they are
  (a provider down for a while, then back).
- `retry_after`: seconds to report as the provider's Retry-After on transient failures.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

from ..base import Channel, Message
from ..errors import PermanentChannelError, TransientChannelError


class FakeChannel(Channel):
    kind = "fake"
    sends_in_process = True

    def __init__(
        self,
        name: str,
        *,
        latency_ms: float = 0,
        transient_rate: float = 0.0,
        permanent_rate: float = 0.0,
        fail_first_attempts: int = 0,
        fail_first_sends: int = 0,
        retry_after: float | None = None,
    ):
        super().__init__(name, timeout=latency_ms / 1000 + 1.0)
        self.latency = latency_ms / 1000
        self.transient_rate = transient_rate
        self.permanent_rate = permanent_rate
        self.fail_first_attempts = fail_first_attempts
        self._failures_left = fail_first_sends
        self._lock = threading.Lock()
        self.retry_after = retry_after

    def send(self, message: Message) -> str:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            down, self._failures_left = self._failures_left > 0, max(0, self._failures_left - 1)
        if down:
            raise TransientChannelError("fake provider down", retry_after=self.retry_after)
        if message.attempt <= self.fail_first_attempts:
            raise TransientChannelError(f"fake transient failure on attempt {message.attempt}", retry_after=self.retry_after)
        roll = random.random()
        if roll < self.permanent_rate:
            raise PermanentChannelError("fake permanent failure")
        if roll < self.permanent_rate + self.transient_rate:
            raise TransientChannelError("fake transient failure", retry_after=self.retry_after)
        return f"fake-{uuid.uuid4()}"

    def describe(self) -> dict:
        return {**super().describe(), "latency_ms": self.latency * 1000}
