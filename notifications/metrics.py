"""Prometheus metrics of the API side (served with the dispatchers' at /metrics).

    notifications_accepted_total{channel}   notifications committed by the intake (replays of
                                            an Idempotency-Key are not counted again)

Under gunicorn the values are file-backed in PROMETHEUS_MULTIPROC_DIR (see outbox/metrics.py)
so that /metrics, answered by any one worker, covers all of them.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Iterable

from prometheus_client import Counter

ACCEPTED = Counter(
    "notifications_accepted", "Notifications accepted (committed with their outbox row) by the API, by channel.",
    ["channel"],
)


def count_accepted(channels: Iterable[str]) -> None:
    """Count accepted notifications, given the channel of each."""
    for channel, number in Tally(channels).items():
        ACCEPTED.labels(channel=channel).inc(number)

RECEIPTS = Counter(
    "notifications_receipts",
    "Provider receipts received, by source and result: applied (to a notification), pending (no notification "
    "has its provider id yet: an unknown id, or one whose send is not recorded yet), duplicate, forged, malformed.",
    ["source", "result"],
)


def count_receipts(source: str, result: str, number: int = 1) -> None:
    """Count receipts of `source` with their `result`."""
    if number:
        RECEIPTS.labels(source=source, result=result).inc(number)
