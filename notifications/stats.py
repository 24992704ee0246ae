"""Delivery statistics for the last hour and the last day: what the admin's statistics page
and `GET /api/v1/stats` show.

A window is the current minute and the whole minutes before it (60 for the hour, 1,440 for the
day), so that its per-minute series has exactly one point per minute. Every figure of a window
is about the notifications *accepted* in it (created_at in the window):

- `by_status`, `by_channel`: how many there are, by their status now;
- `deliveries_per_minute`: how many of them were sent, by the minute of their sent_at;
- `latency_seconds`: from acceptance (created_at) to sent (sent_at), per channel: p50, p95,
  p99 (PostgreSQL's percentile_cont, interpolated);
- `top_failure_reasons`: the last_error of those that failed, grouped, the 10 most frequent.

Windowing on created_at keeps each query a range scan of an index that exists:
notification_created_idx (created_at), or notification_client_idx (client, created_at) for one
client. sent_at has no index on purpose: an index on it would make every FINISH update of the
dispatchers a non-HOT update. The price: a notification accepted before the window but sent
in it (a scheduled one, or after long retries) counts in neither series nor latency.

Four queries, each one scan of the day's rows that serves both windows (FILTER clauses), plus
one `SELECT statement_timestamp()` when `now` is not given: time is the database's clock, as
everywhere in this service.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection

from .models import ApiClient, Status

WINDOWS = (("hour", 60), ("day", 24 * 60))
TOP_FAILURE_REASONS = 10
REASON_MAX_CHARS = 500  # failure reasons are grouped on their first 500 characters
NO_REASON = "(no error recorded)"

_SCOPE = "created_at >= %(day_since)s AND created_at <= %(now)s {client}"

COUNTS = """
SELECT channel, status,
       count(*) FILTER (WHERE created_at >= %(hour_since)s) AS hour,
       count(*) AS day
FROM notification
WHERE {scope}
GROUP BY channel, status
"""

DELIVERIES = """
SELECT date_trunc('minute', sent_at) AS minute,
       count(*) FILTER (WHERE created_at >= %(hour_since)s) AS hour,
       count(*) AS day
FROM notification
WHERE {scope} AND sent_at >= %(day_since)s AND sent_at <= %(now)s
GROUP BY 1
"""

LATENCY = """
SELECT channel,
       count(*) FILTER (WHERE created_at >= %(hour_since)s) AS hour_count,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at))
           FILTER (WHERE created_at >= %(hour_since)s) AS hour,
       count(*) AS day_count,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at)) AS day
FROM notification
WHERE {scope} AND sent_at IS NOT NULL AND sent_at <= %(now)s
GROUP BY channel
"""

# Grouped once for both windows; each window's top N picked by its own count.
FAILURES = """
WITH reasons AS (
    SELECT coalesce(nullif(left(last_error, %(reason_chars)s), ''), %(no_reason)s) AS reason,
           count(*) FILTER (WHERE created_at >= %(hour_since)s) AS hour,
           array_agg(DISTINCT channel ORDER BY channel) FILTER (WHERE created_at >= %(hour_since)s) AS hour_channels,
           count(*) AS day,
           array_agg(DISTINCT channel ORDER BY channel) AS day_channels
    FROM notification
    WHERE {scope} AND status = 'failed'
    GROUP BY 1
)
(SELECT 'hour' AS window, reason, hour AS count, hour_channels AS channels
 FROM reasons WHERE hour > 0 ORDER BY hour DESC, reason LIMIT %(top)s)
UNION ALL
(SELECT 'day', reason, day, day_channels
 FROM reasons ORDER BY day DESC, reason LIMIT %(top)s)
"""


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
            cursor.execute("SELECT statement_timestamp()")
            now = cursor.fetchone()[0]
        current_minute = now.replace(second=0, microsecond=0)
        since = {name: current_minute - timedelta(minutes=minutes - 1) for name, minutes in WINDOWS}
        params = {
            "now": now, "hour_since": since["hour"], "day_since": since["day"], "client_id": client_id,
            "reason_chars": REASON_MAX_CHARS, "no_reason": NO_REASON, "top": TOP_FAILURE_REASONS,
        }
        scope = _SCOPE.format(client="AND client_id = %(client_id)s" if client_id is not None else "")

        def rows(sql: str) -> list[tuple]:
            cursor.execute(sql.format(scope=scope), params)
            return cursor.fetchall()

        counts, deliveries, latency, failures = rows(COUNTS), rows(DELIVERIES), rows(LATENCY), rows(FAILURES)

    result = {
        "generated_at": now,
        "client": _client_name(client, client_id),
    }
    for index, (name, minutes) in enumerate(WINDOWS):
        result[name] = _window(
            name, minutes, since[name], now,
            counts=[(channel, status, row_counts[index]) for channel, status, *row_counts in counts],
            deliveries={minute: row_counts[index] for minute, *row_counts in deliveries},
            latency=[(channel, row[2 * index], row[2 * index + 1]) for channel, *row in latency],
            failures=[row[1:] for row in failures if row[0] == name],
        )
    return result


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
