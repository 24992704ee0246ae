"""The wait between attempts to reach something that is down (the database, mostly)."""

from __future__ import annotations


class Backoff:
    """Exponential: `first` seconds, doubling up to `cap`; `reset()` after a success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        wait, self.current = self.current, min(self.cap, self.current * 2)
        return wait

    def reset(self) -> None:
        self.current = self.first
