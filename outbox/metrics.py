"""Prometheus metrics of the delivery side, and the outbox gauges of the API's /metrics.

Dispatcher processes count their attempts here (the outcome recorder -> observe_attempt):

    deliveries_total{channel, outcome}     attempts by outcome: sent, retrying, failed
    send_duration_seconds{channel}         histogram of channel.send() durations
    retries_total{channel}                 attempts that ended in a scheduled retry
    outcomes_unrecorded_total{reason}      outcomes the recorder could not write as they were:
                                           leases_expired (the database stayed down; the rows
                                           are sent again) or refused (written as failed)
    dispatchers_cannot_record              dispatcher processes that cannot record outcomes
                                           right now (and so claim nothing)
    circuit_breaker_transitions_total{channel, state}
                                           a channel's breaker entered open, half_open, closed

Dispatchers are forked children of a supervisor, and the API runs in gunicorn workers, so the
counters use prometheus_client's multiprocess mode: each process writes its values to files
in PROMETHEUS_MULTIPROC_DIR and whoever serves /metrics adds them up (MultiProcessCollector).
prometheus_client decides between in-memory and file-backed values when a metric is built,
from the environment (when prometheus_client is imported, which Django's app loading does),
so the dispatcher metrics are built on first use, in the child, after the supervisor has
chosen the directory (use_multiprocess_dir).

OutboxCollector computes outbox_pending and outbox_oldest_due_age_seconds at scrape time with
one query, and outbox_unconfigured_pending{channel} (the pending notifications of each
channel that the channels file no longer configures: nothing sends them) with another; the
API's /metrics adds it to what the processes wrote.
"""

from __future__ import annotations

import logging
import os
import threading

from django.db import DatabaseError, InterfaceError, connection

logger = logging.getLogger("outbox.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Providers are network calls: from milliseconds to the send timeout (10 s by default).
SEND_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process, or None (metrics live in memory)."""
    return os.environ.get(MULTIPROC_ENV) or None


def use_multiprocess_dir(path: str) -> None:
    """Make metrics built from now on in this process (and its future children) file-backed in
    `path`. prometheus_client reads the variable once, when it is imported (already done by
    then: Django's app loading imports notifications.metrics), so its choice is made again here.
    Metrics built before this call stay in memory."""
    os.makedirs(path, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def mark_process_dead(pid: int) -> None:
    """Bookkeeping for a process of the multiprocess directory that exited (supervisor, gunicorn)."""
    path = multiprocess_dir()
    if not path:
        return
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, path)
    except OSError as exc:  # never let bookkeeping break the reaper
        logger.warning("could not mark process %d dead in %s (%s)", pid, path, exc)


def multiprocess_registry(path: str | None = None):
    """A registry that adds up the values of every process of the multiprocess directory."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path or multiprocess_dir())
    return registry


# --- dispatcher metrics ---------------------------------------------------------------------------


class _DispatcherMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.deliveries = Counter(
            "deliveries", "Delivery attempts by channel and outcome (sent, retrying, failed).", ["channel", "outcome"]
        )
        self.send_duration = Histogram(
            "send_duration_seconds", "Duration of channel sends (the provider call), by channel.", ["channel"],
            buckets=SEND_DURATION_BUCKETS,
        )
        self.retries = Counter("retries", "Delivery attempts that ended in a scheduled retry, by channel.", ["channel"])
        self.unrecorded = Counter(
            "outcomes_unrecorded", "Outcomes not recorded as they were, by reason (leases_expired, refused).", ["reason"]
        )
        self.breaker_transitions = Counter(
            "circuit_breaker_transitions", "Circuit breaker transitions, by channel and the state entered.",
            ["channel", "state"],
        )
        self.cannot_record = Gauge(
            "dispatchers_cannot_record", "Dispatcher processes that cannot record outcomes now (they claim nothing).",
            multiprocess_mode="livesum",
        )


_metrics: _DispatcherMetrics | None = None
_metrics_lock = threading.Lock()


def _dispatcher_metrics() -> _DispatcherMetrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = _DispatcherMetrics()
    return _metrics


def observe_attempt(channel: str, outcome: str, seconds: float) -> None:
    """Count one delivery attempt and its send duration (outcome: sent, retrying or failed)."""
    metrics = _dispatcher_metrics()
    metrics.deliveries.labels(channel=channel, outcome=outcome).inc()
    metrics.send_duration.labels(channel=channel).observe(seconds)
    if outcome == "retrying":
        metrics.retries.labels(channel=channel).inc()


def count_unrecorded(reason: str, count: int) -> None:
    """Outcomes the recorder gave up on (leases_expired) or wrote as failed instead (refused)."""
    _dispatcher_metrics().unrecorded.labels(reason=reason).inc(count)


def count_breaker_transition(channel: str, state: str) -> None:
    """A channel's circuit breaker entered `state` (open, half_open, closed)."""
    _dispatcher_metrics().breaker_transitions.labels(channel=channel, state=state).inc()


def set_cannot_record(cannot: bool) -> None:
    """Whether this dispatcher process cannot record outcomes right now."""
    _dispatcher_metrics().cannot_record.set(1 if cannot else 0)


# --- outbox gauges, computed at scrape time -------------------------------------------------------

# One pass over the outbox, which holds pending work only and stays as small as the backlog.
# Rows leased to a dispatcher have run_at at their lease's end, so they are not due until the
# lease expires; scheduled rows are not due before their send_at. "Due" is the claim's own
# test (outbox/sql.py, CLAIM): run_at <= statement_timestamp().
OUTBOX_GAUGES_SQL = """
SELECT count(*),
       COALESCE(EXTRACT(EPOCH FROM statement_timestamp()
                                   - min(run_at) FILTER (WHERE run_at <= statement_timestamp())), 0)::float8
FROM outbox
"""


# The fleet's state of each channel with a policy (rate budget, circuit breaker).
CHANNEL_STATE_SQL = "SELECT channel, breaker FROM channel_state ORDER BY channel"
BREAKER_STATES = ("closed", "open", "half_open")


class OutboxCollector:
    """outbox_pending, outbox_oldest_due_age_seconds, channel_circuit_breaker{channel, state}
    (1 for each channel's current state) and outbox_unconfigured_pending{channel}, queried
    when scraped. If the database does not answer, the gauges are left out of that scrape (and
    /readyz answers 503)."""

    def describe(self):
        return self._families(None, None, [], [])

    def collect(self):
        from channels.errors import ChannelConfigurationError
        from channels.registry import all_channels

        from .unconfigured import find

        try:
            with connection.cursor() as cursor:
                cursor.execute(OUTBOX_GAUGES_SQL)
                pending, oldest_age = cursor.fetchone()
                cursor.execute(CHANNEL_STATE_SQL)
                breakers = cursor.fetchall()
            try:
                configured = all_channels()
            except ChannelConfigurationError:  # the API does not start so; `manage.py check` says why
                configured = None
            stranded = [] if configured is None else [(c.channel, c.pending) for c in find(configured)]
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("metrics: outbox gauges unavailable (%s)", exc)
            return []
        return self._families(pending, max(0.0, float(oldest_age)), breakers, stranded)

    @staticmethod
    def _families(pending, oldest_age, breakers, stranded):
        from prometheus_client.core import GaugeMetricFamily

        families = [
            GaugeMetricFamily("outbox_pending", "Notifications waiting in the outbox (due, scheduled or being sent)."),
            GaugeMetricFamily("outbox_oldest_due_age_seconds",
                              "Seconds since the oldest due outbox row became due (0 if none is due)."),
            GaugeMetricFamily("channel_circuit_breaker", "Each channel's circuit breaker: 1 for its current state.",
                              labels=["channel", "state"]),
            GaugeMetricFamily("outbox_unconfigured_pending",
                              "Notifications pending for a channel that is not configured (no dispatcher serves it), "
                              "by channel; absent when there are none.", labels=["channel"]),
        ]
        if pending is not None:
            families[0].add_metric([], pending)
            families[1].add_metric([], oldest_age)
        for channel, current in breakers:
            for state in BREAKER_STATES:
                families[2].add_metric([channel, state], 1 if state == current else 0)
        for channel, count in stranded:
            families[3].add_metric([channel], count)
        return families
