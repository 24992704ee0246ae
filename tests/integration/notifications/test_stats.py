"""Delivery statistics (notifications.stats) on known data with fixed timestamps, and
GET /api/v1/stats: its shape, its scoping to the calling client, its authentication."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.models import Notification, Status
from notifications.stats import NO_REASON, notification_stats
from tests.helpers import enqueue, make_api_client, tenant

UTC = timezone.utc
NOW = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
HOUR_SINCE = datetime(2030, 1, 1, 11, 1, tzinfo=UTC)
DAY_SINCE = datetime(2029, 12, 31, 12, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    """'2030-01-01 11:50:00.5' -> an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def add(channel: str, status: str, created: str, *, sent: str | None = None, error: str = "", client: str = "tests") -> Notification:
    return Notification.objects.create(
        client=tenant(client), channel=channel, recipient="someone", message="m", status=status,
        created_at=at(created), sent_at=at(sent) if sent else None, last_error=error,
    )


@pytest.fixture
def known_data(db):
    # In the last hour (11:01:00 .. 12:00:30)
    add("email-log", "sent", "2030-01-01 11:50:00", sent="2030-01-01 11:50:00.5")   # 0.5 s
    add("email-log", "sent", "2030-01-01 11:55:10", sent="2030-01-01 11:55:11.5")   # 1.5 s
    add("email-log", "sent", "2030-01-01 11:58:00", sent="2030-01-01 11:58:02.5")   # 2.5 s
    add("email-log", "failed", "2030-01-01 11:59:00", error="SMTP server refused the recipient: 550")
    add("email-log", "failed", "2030-01-01 11:59:30", error="SMTP server refused the recipient: 550")
    add("email-log", "queued", "2030-01-01 12:00:10")
    add("sms-log", "sent", "2030-01-01 11:30:00", sent="2030-01-01 11:30:10")       # 10 s
    add("sms-log", "failed", "2030-01-01 11:40:00", error="Twilio 21211: invalid number")
    add("email-log", "sent", "2030-01-01 11:01:00", sent="2030-01-01 11:01:01")     # the window's first instant: 1 s
    # In the day only
    add("email-log", "sent", "2030-01-01 06:00:00", sent="2030-01-01 06:00:04")     # 4 s
    add("sms-log", "failed", "2029-12-31 13:00:00", error="Twilio 21211: invalid number")
    add("email-log", "cancelled", "2029-12-31 12:01:00")                             # the day's first instant
    # Outside both windows
    add("email-log", "sent", "2029-12-31 12:00:59", sent="2029-12-31 12:01:30")     # accepted before the day
    add("email-log", "queued", "2030-01-01 12:01:00")                                # after the current minute
    add("email-log", "sent", "2030-01-01 11:00:59", sent="2030-01-01 11:01:30")     # day, not hour
    # Another client's, in the last hour
    add("email-log", "sent", "2030-01-01 11:45:00", sent="2030-01-01 11:45:30", client="other")
    add("webhook", "failed", "2030-01-01 11:46:00", error="HTTP 404", client="other")


def zero_statuses(**counts) -> dict:
    return {**dict.fromkeys(Status.values, 0), **counts}


def test_windows_are_whole_minutes_up_to_now(known_data):
    stats = notification_stats(now=NOW)
    assert stats["generated_at"] == NOW and stats["client"] is None
    hour, day = stats["hour"], stats["day"]
    assert (hour["name"], hour["minutes"], hour["since"], hour["until"]) == ("hour", 60, HOUR_SINCE, NOW)
    assert (day["name"], day["minutes"], day["since"], day["until"]) == ("day", 1440, DAY_SINCE, NOW)


def test_counts_by_status_and_channel_for_all_clients(known_data):
    stats = notification_stats(now=NOW)
    hour, day = stats["hour"], stats["day"]
    assert hour["by_status"] == zero_statuses(sent=6, failed=4, queued=1)
    assert hour["accepted"] == 11
    assert hour["by_channel"] == [
        {"channel": "email-log", "total": 8, "by_status": zero_statuses(sent=5, failed=2, queued=1)},
        {"channel": "sms-log", "total": 2, "by_status": zero_statuses(sent=1, failed=1)},
        {"channel": "webhook", "total": 1, "by_status": zero_statuses(failed=1)},
    ]
    assert day["by_status"] == zero_statuses(sent=8, failed=5, queued=1, cancelled=1)
    assert day["accepted"] == 15
    assert [(row["channel"], row["total"]) for row in day["by_channel"]] == [("email-log", 11), ("sms-log", 3), ("webhook", 1)]


def test_deliveries_per_minute_are_zero_filled_and_by_sent_minute(known_data):
    stats = notification_stats(now=NOW)
    hour = stats["hour"]["deliveries_per_minute"]
    assert len(hour) == 60
    assert [p["minute"] for p in hour] == [HOUR_SINCE + timedelta(minutes=i) for i in range(60)]
    nonzero = {p["minute"].strftime("%H:%M"): p["count"] for p in hour if p["count"]}
    assert nonzero == {"11:01": 1, "11:30": 1, "11:45": 1, "11:50": 1, "11:55": 1, "11:58": 1}
    assert stats["hour"]["delivered"] == 6

    day = stats["day"]["deliveries_per_minute"]
    assert len(day) == 1440 and day[0]["minute"] == DAY_SINCE and day[-1]["minute"] == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    nonzero = {p["minute"].strftime("%d %H:%M"): p["count"] for p in day if p["count"]}
    # 11:01 twice: the notification of 11:01:00 and the one of 11:00:59 (accepted in the day only).
    assert nonzero == {"01 06:00": 1, "01 11:01": 2, "01 11:30": 1, "01 11:45": 1, "01 11:50": 1, "01 11:55": 1, "01 11:58": 1}
    assert stats["day"]["delivered"] == 8


def test_latency_percentiles_per_channel(known_data):
    stats = notification_stats(now=NOW)
    # email-log, hour: 0.5, 1, 1.5, 2.5 (+ other client's 30 s) -> 0.5, 1, 1.5, 2.5, 30
    hour = {row["channel"]: row for row in stats["hour"]["latency_seconds"]}
    assert set(hour) == {"email-log", "sms-log"}
    # percentile_cont: linear interpolation between the sorted values at p * (n - 1).
    assert hour["email-log"] == {"channel": "email-log", "count": 5, "p50": 1.5, "p95": pytest.approx(24.5), "p99": pytest.approx(28.9)}
    assert hour["sms-log"] == {"channel": "sms-log", "count": 1, "p50": 10.0, "p95": 10.0, "p99": 10.0}
    day = {row["channel"]: row for row in stats["day"]["latency_seconds"]}
    # email-log, day: 0.5, 1, 1.5, 2.5, 4, 30, 31 (11:00:59 -> 11:01:30)
    assert day["email-log"]["count"] == 7
    assert day["email-log"]["p50"] == 2.5
    assert day["email-log"]["p95"] == pytest.approx(30.7)   # 30 + 0.7 * 1
    assert day["email-log"]["p99"] == pytest.approx(30.94)  # 30 + 0.94 * 1


def test_latency_scoped_to_a_client_with_exact_percentiles(known_data):
    stats = notification_stats(client=tenant("tests"), now=NOW)
    email = stats["hour"]["latency_seconds"][0]
    # 0.5, 1, 1.5, 2.5: p50 at 1.5 -> 1.25; p95 at 2.85 -> 1.5 + 0.85; p99 at 2.97 -> 1.5 + 0.97
    assert email == {"channel": "email-log", "count": 4, "p50": 1.25, "p95": 2.35, "p99": 2.47}


def test_top_failure_reasons(known_data):
    stats = notification_stats(now=NOW)
    assert stats["hour"]["top_failure_reasons"] == [
        {"reason": "SMTP server refused the recipient: 550", "count": 2, "channels": ["email-log"]},
        {"reason": "HTTP 404", "count": 1, "channels": ["webhook"]},
        {"reason": "Twilio 21211: invalid number", "count": 1, "channels": ["sms-log"]},
    ]
    assert stats["day"]["top_failure_reasons"][:2] == [
        {"reason": "SMTP server refused the recipient: 550", "count": 2, "channels": ["email-log"]},
        {"reason": "Twilio 21211: invalid number", "count": 2, "channels": ["sms-log"]},
    ]


def test_top_failure_reasons_are_ten_at_most_and_name_an_empty_error(db):
    for i in range(12):
        for _ in range(i + 1):
            add("fake", "failed", "2030-01-01 11:30:00", error=f"reason {i:02d}")
    add("fake", "failed", "2030-01-01 11:30:00", error="")
    reasons = notification_stats(now=NOW)["hour"]["top_failure_reasons"]
    assert [(r["reason"], r["count"]) for r in reasons] == [(f"reason {i:02d}", i + 1) for i in range(11, 1, -1)]
    add("fake", "failed", "2030-01-01 11:30:00", error="")
    for _ in range(20):
        add("fake", "failed", "2030-01-01 11:31:00", error="")
    assert notification_stats(now=NOW)["hour"]["top_failure_reasons"][0] == {"reason": NO_REASON, "count": 22, "channels": ["fake"]}


def test_scoped_to_one_client(known_data):
    mine = notification_stats(client=tenant("tests"), now=NOW)
    assert mine["client"] == "tests"
    assert mine["hour"]["by_status"] == zero_statuses(sent=5, failed=3, queued=1)
    assert [row["channel"] for row in mine["hour"]["by_channel"]] == ["email-log", "sms-log"]
    assert mine["hour"]["delivered"] == 5
    assert "HTTP 404" not in [r["reason"] for r in mine["hour"]["top_failure_reasons"]]
    theirs = notification_stats(client=tenant("other").pk, now=NOW)
    assert theirs["client"] == "other"
    assert theirs["hour"]["by_status"] == zero_statuses(sent=1, failed=1)
    nobody = notification_stats(client=tenant("nobody"), now=NOW)
    assert nobody["hour"]["accepted"] == 0 and nobody["day"]["latency_seconds"] == [] and nobody["day"]["top_failure_reasons"] == []
    assert sum(p["count"] for p in nobody["day"]["deliveries_per_minute"]) == 0


def test_five_queries_of_the_counters_never_of_the_notifications(known_data):
    """A fold, then one query per figure, each reading the totals and the deltas: the
    notification table itself is never read."""
    for kwargs, expected in (({"client": tenant("tests"), "now": NOW}, 5), ({}, 5)):
        with CaptureQueriesContext(connection) as queries:
            notification_stats(**kwargs)
        statements = [q["sql"] for q in queries.captured_queries]
        assert len(statements) == expected, statements
        assert "notification_stats_fold()" in statements[0]
        assert not any(re.search(r"\bnotification\b(?!_)", sql) for sql in statements), statements
        if "client" in kwargs:
            assert all("client_id =" in sql for sql in statements[1:])


def test_the_plans_are_range_scans_of_the_totals(known_data):
    """With a month of totals around (as if never pruned) and a few deltas left, each query
    reads only its windows' rows: range scans of each totals table's primary key (period_minutes,
    period_start, ...), and the deltas' table, small, whole."""
    from notifications import stats as module

    client_id = tenant("tests").pk
    with connection.cursor() as cursor:
        cursor.execute("SELECT notification_stats_fold()")
        for table, extra in (("notification_stats_status", "'email-log', 'sent', 3"),
                             ("notification_stats_sent", "start, 3"),
                             ("notification_stats_latency", "'email-log', 100, 3, 3000000"),
                             ("notification_stats_failure", "'email-log', 'x', 3")):
            columns = {"notification_stats_status": "channel, status, n",
                       "notification_stats_sent": "sent_minute, n",
                       "notification_stats_latency": "channel, latency_bucket, n, latency_us",
                       "notification_stats_failure": "channel, failure_reason, n"}[table]
            cursor.execute(
                f"INSERT INTO {table} (period_minutes, period_start, client_id, {columns}) "
                f"SELECT span, start, %s, {extra} FROM ("
                "  SELECT 1 AS span, timestamptz '2029-12-01' + i * interval '1 minute' AS start FROM generate_series(1, 40000) AS i"
                "  UNION ALL"
                "  SELECT 60, timestamptz '2029-12-01' + i * interval '1 hour' FROM generate_series(1, 700) AS i) AS p "
                f"ON CONFLICT DO NOTHING", [client_id])
            cursor.execute(f"ANALYZE {table}")
        add("email-log", "queued", "2030-01-01 11:59:00")  # a delta left
        current_minute = NOW.replace(second=0)
        params = {"current_minute": current_minute, "hour_since": HOUR_SINCE, "day_since": DAY_SINCE,
                  "day_hours_from": DAY_SINCE.replace(minute=0) + timedelta(hours=1),
                  "day_hours_until": current_minute.replace(minute=0), "client_id": client_id, "top": 10}
        for scope in ("AND client_id = %(client_id)s", ""):
            for sql in (module.COUNTS, module.DELIVERIES, module.LATENCY, module.FAILURES):
                cursor.execute("EXPLAIN " + sql.format(client=scope), params)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                seq_scans = set(re.findall(r"Seq Scan on (\w+)", plan))
                assert seq_scans <= {"notification_stats_delta"}, plan
                assert re.search(r"Index (Only )?Scan using notification_stats_\w+_pkey", plan) or \
                    "Bitmap Index Scan on notification_stats_" in plan, plan
                assert re.search(r"Index Cond: .*period_start >=", plan), plan


# --- GET /api/v1/stats ----------------------------------------------------------------------


def test_api_stats_shape_and_scope(db):
    api = make_api_client("tests")
    enqueue(2, channel="email-log")  # the client "tests"
    Notification.objects.create(client=tenant("other"), channel="sms-log", recipient="+14155550100", message="m")
    for path in ("/api/v1/stats", "/api/v1/stats/"):
        response = api.get(path)
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"generated_at", "client", "hour", "day"}
        assert body["client"] == "tests"
        for name, minutes in (("hour", 60), ("day", 1440)):
            window = body[name]
            assert set(window) == {"name", "minutes", "since", "until", "accepted", "delivered", "by_status",
                                   "by_channel", "deliveries_per_minute", "latency_seconds", "top_failure_reasons"}
            assert window["name"] == name and window["minutes"] == minutes
            assert window["accepted"] == 2 and window["by_status"] == zero_statuses(queued=2)
            assert window["by_channel"] == [{"channel": "email-log", "total": 2, "by_status": zero_statuses(queued=2)}]
            assert len(window["deliveries_per_minute"]) == minutes
            assert set(window["deliveries_per_minute"][0]) == {"minute", "count"}
            assert window["deliveries_per_minute"][0]["minute"] == window["since"]
            assert window["latency_seconds"] == [] and window["top_failure_reasons"] == []


def test_api_stats_figures_over_the_wire(db):
    api = make_api_client("tests")
    (nid,) = enqueue(1, channel="email-log")
    Notification.objects.filter(pk=nid).update(status="failed", last_error="SMTP <550>")
    other = enqueue(1, channel="email-log")
    with connection.cursor() as cursor:  # accepted a second ago, sent 0.25 s after that
        cursor.execute("UPDATE notification SET status = 'sent', created_at = created_at - interval '1 second', "
                       "sent_at = created_at - interval '750 milliseconds' WHERE id = %s", [other[0]])
    hour = api.get("/api/v1/stats").json()["hour"]
    assert hour["by_status"]["failed"] == 1 and hour["by_status"]["sent"] == 1
    assert hour["latency_seconds"] == [{"channel": "email-log", "count": 1, "p50": 0.25, "p95": 0.25, "p99": 0.25}]
    assert hour["top_failure_reasons"] == [{"reason": "SMTP <550>", "count": 1, "channels": ["email-log"]}]
    assert hour["delivered"] == 1


def test_api_stats_needs_an_api_key(client, db):
    response = client.get("/api/v1/stats")
    assert response.status_code == 401
    assert response.json()["error"]["code"]
    bad = client.get("/api/v1/stats", HTTP_AUTHORIZATION="Bearer ntf_not-a-key")
    assert bad.status_code == 401


def test_api_stats_is_documented(db, client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    operation = paths["/api/v1/stats"]["get"]
    assert set(operation["responses"]) >= {"200", "401", "429"}
    assert "/api/v1/stats/" not in paths
