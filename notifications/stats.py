"""Delivery statistics for the last hour and the last day: what the admin's statistics page
and `GET /api/v1/stats` show.

A window is the current minute and the whole minutes before it (60 for the hour, 1,440 for the
day), so that its per-minute series has exactly one point per minute. Every figure of a window
is about the notifications *accepted* in it (created_at in one of its minutes):

- `by_status`, `by_channel`: how many there are, by their status now;
- `deliveries_per_minute`: how many of them were sent, by the minute of their sent_at;
- `latency_seconds`: from acceptance (created_at) to sent (sent_at), per channel: p50, p95,
  p99, interpolated as PostgreSQL's percentile_cont does, from a histogram (below);
- `top_failure_reasons`: the last_error of those that failed, grouped on its first 500
  characters, the 10 most frequent.

The figures come from counters, not from the notifications: triggers on the notification
table count every change by the minute of acceptance, client, channel and status (with the
minute of sent_at, a latency bucket and the failure reason), whichever statement makes it, and
this module reads per-minute and per-hour totals of them (the migration notifications 0009
says how). So a read costs the same at 1,000 or 10,000,000 notifications a day: a day's window
is 23 hour rows and at most 120 minute rows per key, the hour's 60 minute rows.

- Counts are exact. The current minute counts whole: with `now` from the database's clock (the
  default) nothing visible was accepted after it.
- Latency percentiles come from buckets 4% wide (a log scale from 1 ms) holding their count and
  the exact sum of their latencies; each bucket stands for its mean. Exact when the latencies in
  a bucket are equal, within 4% always (below 1 ms: within 1 ms).
- Only the last 25 hours are kept: a `now` further back finds nothing.
- A notification accepted before the window but sent in it (a scheduled one, or after long
  retries) counts in neither series nor latency, as before.

Five queries: a fold of the deltas not yet folded (with the database's clock when `now` is not
given: time is the database's, as everywhere in this service), then one per figure, each adding
the totals and the deltas that the fold left (another fold was running, or they came since), so
that the answer is exact whether or not the fold ran.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from django.db import connection

from .models import ApiClient, Status

WINDOWS = (("hour", 60), ("day", 24 * 60))
TOP_FAILURE_REASONS = 10
REASON_MAX_CHARS = 500  # failure reasons are grouped on their first 500 characters (migration 0009)
NO_REASON = "(no error recorded)"
LATENCY_BUCKET_RATIO = 1.04  # the histogram's bucket width (migration 0009, notification_stats_latency_bucket)
KEPT_HOURS = 25  # totals older than this are pruned (the day's window and an hour's margin)

# Which total rows a window adds: the hour's minute rows; the day's hour rows for its whole
# hours and minute rows for the minutes before and after them. Index: each table's primary key
# (period_minutes, period_start, ...), range scans.
_HOUR_ROWS = "(period_minutes = 1 AND period_start >= %(hour_since)s AND period_start <= %(current_minute)s)"
_DAY_ROWS = (
    "((period_minutes = 1 AND (period_start >= %(day_since)s AND period_start < %(day_hours_from)s"
    " OR period_start >= %(day_hours_until)s AND period_start <= %(current_minute)s))"
    " OR (period_minutes = 60 AND period_start >= %(day_hours_from)s AND period_start < %(day_hours_until)s))"
)
# The deltas not folded yet (notification_stats_delta: a sequential scan of what is left, a
# few rows; minute rows only).
_DELTA_HOUR = "minute >= %(hour_since)s"
_DELTA_DAY = "minute >= %(day_since)s AND minute <= %(current_minute)s"


def _rows(columns: str, table: str, *, where: str = "TRUE") -> str:
    """The rows of one figure's totals and of the deltas, with in_hour and in_day flags."""
    return f"""
    SELECT {columns}, {_HOUR_ROWS} AS in_hour, {_DAY_ROWS} AS in_day
    FROM {table}
    WHERE ({_HOUR_ROWS} OR {_DAY_ROWS}) AND {where} {{client}}
    UNION ALL
    SELECT {columns}, {_DELTA_HOUR}, TRUE
    FROM notification_stats_delta
    WHERE {_DELTA_DAY} AND {where} {{client}}
    """


COUNTS = f"""
WITH counted AS ({_rows("channel, status, n", "notification_stats_status")})
SELECT channel, status, sum(n) FILTER (WHERE in_hour)::bigint AS hour, sum(n) FILTER (WHERE in_day)::bigint AS day
FROM counted
GROUP BY channel, status
"""

DELIVERIES = f"""
WITH counted AS ({_rows("sent_minute, n", "notification_stats_sent", where="sent_minute IS NOT NULL")})
SELECT sent_minute, sum(n) FILTER (WHERE in_hour)::bigint AS hour, sum(n) FILTER (WHERE in_day)::bigint AS day
FROM counted
WHERE sent_minute >= %(day_since)s AND sent_minute <= %(current_minute)s
GROUP BY sent_minute
"""

# One row per channel and bucket: count and sum of latencies (µs) in each window.
LATENCY = f"""
WITH counted AS ({_rows("channel, latency_bucket, n, latency_us", "notification_stats_latency",
                        where="latency_bucket IS NOT NULL")})
SELECT channel, latency_bucket,
       sum(n) FILTER (WHERE in_hour)::bigint AS hour, sum(latency_us) FILTER (WHERE in_hour)::bigint AS hour_us,
       sum(n) FILTER (WHERE in_day)::bigint AS day, sum(latency_us) FILTER (WHERE in_day)::bigint AS day_us
FROM counted
GROUP BY channel, latency_bucket
ORDER BY channel, latency_bucket
"""

# Summed per reason and channel first, so that a channel whose count came to zero is not named;
# each window's top N picked by its own count.
FAILURES = f"""
WITH counted AS ({_rows("failure_reason, channel, n", "notification_stats_failure",
                        where="failure_reason IS NOT NULL")}),
by_channel AS (
    SELECT failure_reason AS reason, channel,
           sum(n) FILTER (WHERE in_hour)::bigint AS hour, sum(n) FILTER (WHERE in_day)::bigint AS day
    FROM counted
    GROUP BY 1, 2
), reasons AS (
    SELECT reason,
           sum(hour) FILTER (WHERE hour > 0)::bigint AS hour,
           array_agg(channel ORDER BY channel) FILTER (WHERE hour > 0) AS hour_channels,
           sum(day) FILTER (WHERE day > 0)::bigint AS day,
           array_agg(channel ORDER BY channel) FILTER (WHERE day > 0) AS day_channels
    FROM by_channel
    GROUP BY reason
)
(SELECT 'hour' AS window, reason, hour AS count, hour_channels AS channels
 FROM reasons WHERE hour > 0 ORDER BY hour DESC, reason LIMIT %(top)s)
UNION ALL
(SELECT 'day', reason, day, day_channels
 FROM reasons WHERE day > 0 ORDER BY day DESC, reason LIMIT %(top)s)
"""


def fold_counters() -> int | None:
    """Fold the triggers' deltas into the totals now. Returns how many delta rows it folded,
    or None when another fold was running (it folds them)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT notification_stats_fold()")
        return cursor.fetchone()[0]


def prune_counters(*, now: datetime | None = None) -> int:
    """Delete the totals of minutes more than KEPT_HOURS before `now` (the database's clock),
    and those that came to zero. Returns how many rows it deleted."""
    with connection.cursor() as cursor:
        if now is None:
            cursor.execute("SELECT notification_stats_prune(statement_timestamp() - make_interval(hours => %s))",
                           [KEPT_HOURS])
        else:
            cursor.execute("SELECT notification_stats_prune(%s)", [now - timedelta(hours=KEPT_HOURS)])
        return cursor.fetchone()[0]


def notification_stats(*, client: ApiClient | int | None = None, now: datetime | None = None) -> dict:
    """The figures of the last hour and the last day, of one client's notifications or (None)
    of all. `now` defaults to the database's clock.

    Returns {"generated_at", "client", "hour": window, "day": window}; each window is
    {"name", "minutes", "since", "until", "accepted", "delivered", "by_status",
    "by_channel", "deliveries_per_minute", "latency_seconds", "top_failure_reasons"}.
    """
    client_id = client.pk if isinstance(client, ApiClient) else client
    with connection.cursor() as cursor:
        if now is None:
            cursor.execute("SELECT statement_timestamp(), notification_stats_fold()")
            now = cursor.fetchone()[0]
        else:
            cursor.execute("SELECT notification_stats_fold()")
        current_minute = now.replace(second=0, microsecond=0)
        since = {name: current_minute - timedelta(minutes=minutes - 1) for name, minutes in WINDOWS}
        params = {
            "current_minute": current_minute, "hour_since": since["hour"], "day_since": since["day"],
            # The day's whole hours: from the first hour that starts in it to the current one.
            "day_hours_from": _next_hour(since["day"]), "day_hours_until": current_minute.replace(minute=0),
            "client_id": client_id, "top": TOP_FAILURE_REASONS,
        }
        client_scope = "AND client_id = %(client_id)s" if client_id is not None else ""

        def rows(sql: str) -> list[tuple]:
            cursor.execute(sql.format(client=client_scope), params)
            return cursor.fetchall()

        counts, deliveries, latency, failures = rows(COUNTS), rows(DELIVERIES), rows(LATENCY), rows(FAILURES)

    result = {
        "generated_at": now,
        "client": _client_name(client, client_id),
    }
    for index, (name, minutes) in enumerate(WINDOWS):
        histograms: dict[str, list[tuple[int, int]]] = {}
        for channel, _bucket, *sums in latency:
            count, total_us = sums[2 * index], sums[2 * index + 1]
            if count:
                histograms.setdefault(channel, []).append((count, total_us))
        result[name] = _window(
            name, minutes, since[name], now,
            counts=[(channel, status, row_counts[index] or 0) for channel, status, *row_counts in counts],
            deliveries={minute: row_counts[index] or 0 for minute, *row_counts in deliveries},
            latency=[(channel, sum(n for n, _ in buckets), _histogram_percentiles(buckets))
                     for channel, buckets in histograms.items()],
            failures=[row[1:] for row in failures if row[0] == name],
        )
    return result


def _next_hour(moment: datetime) -> datetime:
    """The first whole hour at or after `moment`."""
    hour = moment.replace(minute=0, second=0, microsecond=0)
    return hour if hour == moment else hour + timedelta(hours=1)


def _histogram_percentiles(buckets: list[tuple[int, int]]) -> list[float]:
    """p50, p95 and p99 in seconds of a histogram [(count, sum of latencies in µs), ...] in
    bucket order, as percentile_cont interpolates them: the value at rank p * (n - 1) between
    the two sorted values around it, each value standing for its bucket's mean."""
    total = sum(count for count, _ in buckets)
    # Cumulative counts: the values of ranks [ends[i - 1], ends[i]) are in bucket i.
    ends, running = [], 0
    for count, _ in buckets:
        running += count
        ends.append(running)
    means = [total_us / count / 1e6 for count, total_us in buckets]

    def value(rank: int) -> float:
        low, high = 0, len(ends) - 1
        while low < high:  # the first bucket whose end is past `rank`
            middle = (low + high) // 2
            if ends[middle] > rank:
                high = middle
            else:
                low = middle + 1
        return means[low]

    out = []
    for p in (0.5, 0.95, 0.99):
        rank = p * (total - 1)
        below = math.floor(rank)
        low = value(below)
        out.append(low + (rank - below) * (value(below + 1) - low) if below + 1 < total else low)
    return out


def _window(name, minutes, since, now, *, counts, deliveries, latency, failures) -> dict:
    by_status = dict.fromkeys(Status.values, 0)
    by_channel: dict[str, dict] = {}
    for channel, status, count in counts:
        if not count:
            continue
        by_status[status] = by_status.get(status, 0) + count
        entry = by_channel.setdefault(channel, {"channel": channel, "total": 0, "by_status": dict.fromkeys(Status.values, 0)})
        entry["total"] += count
        entry["by_status"][status] = entry["by_status"].get(status, 0) + count

    series = [
        {"minute": since + timedelta(minutes=i), "count": deliveries.get(since + timedelta(minutes=i), 0)}
        for i in range(minutes)
    ]
    return {
        "name": name,
        "minutes": minutes,
        "since": since,
        "until": now,
        "accepted": sum(by_status.values()),
        "delivered": sum(point["count"] for point in series),
        "by_status": by_status,
        "by_channel": [by_channel[channel] for channel in sorted(by_channel)],
        "deliveries_per_minute": series,
        "latency_seconds": [
            {"channel": channel, "count": count, **_percentiles(values)}
            for channel, count, values in sorted(latency) if count
        ],
        "top_failure_reasons": [
            {"reason": reason, "count": count, "channels": list(channels or [])}
            for reason, count, channels in failures
        ],
    }


def _percentiles(values: list[float] | None) -> dict[str, float | None]:
    values = values or [None, None, None]
    return {key: (round(value, 3) if value is not None else None) for key, value in zip(("p50", "p95", "p99"), values)}


def _client_name(client, client_id) -> str | None:
    if client_id is None:
        return None
    if isinstance(client, ApiClient):
        return client.name
    return ApiClient.objects.filter(pk=client_id).values_list("name", flat=True).first()
