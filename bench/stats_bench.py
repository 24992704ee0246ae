"""stats_ms_at_1m_per_day: GET /api/v1/stats with 1,000,000 notifications accepted in the last day.

The statistics read counters (migration notifications 0009), so their cost should not grow
with traffic. This phase writes a day of notifications for the bench client (STATS_ROWS, or
BENCH_STATS_ROWS for a run by hand at 10,000,000), spread evenly over the last 24 hours, over
four channels, in the mix of a real day: mostly sent or delivered (latencies from 5 ms to 30 s
on a log scale), some failed (20 reasons), undelivered, cancelled, retrying and queued.

They go in as INSERT ... SELECT generate_series statements of 250,000 rows, not through the
intake (minutes for a million): the counting triggers fire on them as on the intake's
inserts, one delta row per key and statement. One fold then moves those deltas into the
totals (timed: the figure's details, `stats_first_fold_s`), as the housekeeping job does
every minute; a read folds only what came since.

Then, timed: GET /api/v1/stats through gunicorn as the bench client (STATS_REQUESTS after a
warm-up, one at a time on a kept-alive connection; the figure is the median, the details have
the maximum), notification_stats() in this process, and the admin's statistics page (all
clients) through Django's test client as a superuser. The notifications are deleted at the end
(TRUNCATE: the counters go with them).
"""

from __future__ import annotations

import http.client
import os
import statistics
import time
from typing import Any

from . import history
from .servers import free_port, start_gunicorn

STATS_ROWS = {"full": 1_000_000, "quick": 1_000_000, "smoke": 10_000}
STATS_REQUESTS = 20
CHUNK_ROWS = 250_000
CHANNELS = ["fake", "sms-bench", "email-bench", "webhook-bench"]

# Rows i in [first, last] of `rows`, created evenly over the last 24 hours (the newest a few
# seconds ago). Status by i % 100; latency 5 ms * 6000^u, u uniform in [0, 1) (5 ms to 30 s).
FILL = """
WITH spread AS (
    SELECT i, statement_timestamp() - interval '24 hours' + i * (interval '24 hours' / %(rows)s) - interval '5 s'
              AS created,
           CASE WHEN i %% 100 < 85 THEN 'sent' WHEN i %% 100 < 92 THEN 'delivered' WHEN i %% 100 < 93 THEN 'undelivered'
                WHEN i %% 100 < 96 THEN 'failed' WHEN i %% 100 < 98 THEN 'cancelled' WHEN i %% 100 < 99 THEN 'retrying'
                ELSE 'queued' END AS status,
           (ARRAY{channels})[1 + i %% {channel_count}] AS channel,
           interval '5 ms' * power(6000, random()) AS latency
    FROM generate_series(%(first)s::integer, %(last)s::integer) AS i
)
INSERT INTO notification (id, client_id, channel, recipient, subject, message, metadata, status, attempts,
                          last_error, provider_message_id, created_at, updated_at, sent_at, priority,
                          reports_status, html, template, locale)
SELECT gen_random_uuid(), %(client_id)s, channel, 'user' || (i %% 100000) || '@example.com', 'Stats', 'm', '{{}}',
       status, 1,
       CASE WHEN status = 'failed' THEN 'provider error ' || (i %% 20) || ': the recipient was refused'
            WHEN status = 'undelivered' THEN '550: bounced' ELSE '' END,
       '', created, created + latency,
       CASE WHEN status IN ('sent', 'delivered', 'undelivered') THEN created + latency END, 1, false, '', '', ''
FROM spread
"""


def stats_phase(run: Any) -> None:
    """stats_ms_at_1m_per_day (see the module docstring). `run` is bench.__main__.Run; needs
    Django set up on the run's database (dispatch.setup_django)."""
    from django.contrib.auth.models import User
    from django.test import Client

    from notifications.stats import notification_stats

    from .at_scale import _client_id

    rows = int(os.environ.get("BENCH_STATS_ROWS") or STATS_ROWS[run.sizes.name])
    run.say(f"stats: {rows:,} notifications accepted in the last day, then GET /api/v1/stats x {STATS_REQUESTS}")
    client_id = _client_id(run)
    fill_sql = FILL.format(channels=repr(CHANNELS).replace('"', "'") + "::text[]", channel_count=len(CHANNELS))
    started = time.monotonic()
    with run.server.connect(run.dbname) as conn:
        for first in range(0, rows, CHUNK_ROWS):
            conn.execute(fill_sql, {"rows": rows, "first": first, "last": min(first + CHUNK_ROWS, rows) - 1,
                                    "client_id": client_id})
        fill_s = time.monotonic() - started
        delta_rows = conn.execute("SELECT count(*) FROM notification_stats_delta").fetchone()[0]
        started = time.monotonic()
        conn.execute("SELECT notification_stats_fold()")
        fold_s = time.monotonic() - started
        conn.execute("VACUUM ANALYZE notification_stats_delta, notification_stats_status, notification_stats_sent, "
                     "notification_stats_latency, notification_stats_failure")
        counter_rows = dict(conn.execute(
            "SELECT 'status', count(*) FROM notification_stats_status UNION ALL "
            "SELECT 'sent', count(*) FROM notification_stats_sent UNION ALL "
            "SELECT 'latency', count(*) FROM notification_stats_latency UNION ALL "
            "SELECT 'failure', count(*) FROM notification_stats_failure").fetchall())
    run.say(f"  written in {fill_s:.1f}s ({delta_rows:,} delta rows), folded in {fold_s:.1f}s; totals {counter_rows}")

    port = free_port()
    api = start_gunicorn(run.env, run.dir, port=port)
    try:
        http_ms = _time_gets(port, run.api_key, requests=STATS_REQUESTS)
    finally:
        api.stop()

    in_process_ms = []
    for _ in range(10):
        started = time.perf_counter()
        stats = notification_stats(client=client_id)
        in_process_ms.append((time.perf_counter() - started) * 1000)
    accepted = stats["day"]["accepted"]

    admin, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    browser = Client()
    browser.force_login(admin)
    admin_ms = []
    for _ in range(6):
        started = time.perf_counter()
        response = browser.get("/admin/notifications/notification/stats/")
        admin_ms.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    admin_ms = admin_ms[1:]  # the first renders the template for the first time

    history.empty(run.server, run.dbname)

    run.figures["stats_ms_at_1m_per_day"] = statistics.median(http_ms)
    run.details.update(
        stats_rows_per_day=rows, stats_accepted_in_day=accepted, stats_fill_s=round(fill_s, 1),
        stats_delta_rows_after_fill=delta_rows, stats_first_fold_s=round(fold_s, 2), stats_total_rows=counter_rows,
        stats_api_ms={"median": statistics.median(http_ms), "max": max(http_ms), "requests": len(http_ms)},
        stats_in_process_ms={"median": statistics.median(in_process_ms), "max": max(in_process_ms)},
        stats_admin_page_ms={"median": statistics.median(admin_ms), "max": max(admin_ms)},
    )
    run.say(f"  GET /api/v1/stats median {statistics.median(http_ms):.1f} ms (max {max(http_ms):.1f}); "
            f"in process {statistics.median(in_process_ms):.1f} ms; admin page {statistics.median(admin_ms):.1f} ms; "
            f"day accepted {accepted:,}")
    if rows != 1_000_000:
        run.notes.append(f"stats_ms_at_1m_per_day: {rows:,} notifications in the day in this run, not 1,000,000")


def _time_gets(port: int, api_key: str, *, requests: int) -> list[float]:
    """Milliseconds of each GET /api/v1/stats after 3 untimed ones, on one kept-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {api_key}"}
    timings = []
    try:
        for number in range(requests + 3):
            started = time.perf_counter()
            connection.request("GET", "/api/v1/stats", headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET /api/v1/stats answered {response.status}: {body[:200]!r}")
            if number >= 3:
                timings.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    return timings


# --- the counting triggers' cost on the hot paths, by hand ------------------------------------------

TRIGGERS = ("notification_stats_inserted", "notification_stats_updated", "notification_stats_deleted")


def trigger_cost(*, legs: str = "ABABAB", batches: int = 40, singles: int = 2000, drain_rows: int = 20_000) -> list[dict]:
    """A-B legs on one database (Django set up on it, migrated): A with the counting triggers,
    B with them disabled (ALTER TABLE notification DISABLE TRIGGER ...). Each leg, on emptied
    tables: outbox.store.enqueue of `batches` x 1,000 rows and of `singles` single rows, then a
    drain of `drain_rows` as a dispatcher does it at the store (claim of 100 started by the
    claim, then one RECORD of 100 'sent'). Returns each leg's rates (rows per second)."""
    from django.db import connection

    from notifications.ids import new_notification_id
    from notifications.models import ApiClient
    from outbox import store

    client_id = ApiClient.objects.get_or_create(name="bench")[0].pk

    def rows(count):
        return [store.NewNotification(id=new_notification_id(), channel="fake", recipient=f"u{i}@example.com",
                                      message=f"message {i}") for i in range(count)]

    results = []
    for leg in legs:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE notification, notification_event, outbox, status_event")
            cursor.execute("VACUUM ANALYZE notification, outbox, notification_event")
            for trigger in TRIGGERS:
                cursor.execute(f"ALTER TABLE notification {'ENABLE' if leg == 'A' else 'DISABLE'} TRIGGER {trigger}")
        prepared = [rows(1000) for _ in range(batches)]
        started = time.perf_counter()
        for batch in prepared:
            store.enqueue(batch, client_id=client_id)
        batch_per_s = batches * 1000 / (time.perf_counter() - started)
        prepared = rows(singles)
        started = time.perf_counter()
        for item in prepared:
            store.enqueue([item], client_id=client_id)
        single_per_s = singles / (time.perf_counter() - started)
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE notification, notification_event, outbox, status_event")
        for start in range(0, drain_rows, 1000):
            store.enqueue(rows(1000), client_id=client_id)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE notification, outbox, notification_event")
        delivered = 0
        started = time.perf_counter()
        while delivered < drain_rows:
            claimed = store.claim(dispatcher="ab", limit=100, lease_seconds=60, channels=["fake"], start={"fake": 100})
            if not claimed:
                break
            delivered += store.record_outcomes([store.Outcome(delivery=d, status="sent", provider_message_id=f"p{d.outbox_id}")
                                                for d in claimed], dispatcher="ab")
        drain_per_s = delivered / (time.perf_counter() - started)
        results.append({"leg": leg, "batch_per_s": batch_per_s, "single_per_s": single_per_s, "drain_per_s": drain_per_s})
        print(f"{leg}: batch {batch_per_s:,.0f}/s, single {single_per_s:,.0f}/s, drain {drain_per_s:,.0f}/s", flush=True)
    with connection.cursor() as cursor:
        for trigger in TRIGGERS:
            cursor.execute(f"ALTER TABLE notification ENABLE TRIGGER {trigger}")
    for key in ("batch_per_s", "single_per_s", "drain_per_s"):
        with_triggers = statistics.fmean(r[key] for r in results if r["leg"] == "A")
        without = statistics.fmean(r[key] for r in results if r["leg"] == "B")
        print(f"{key}: with {with_triggers:,.0f}, without {without:,.0f}, ratio {with_triggers / without:.3f}")
    return results


if __name__ == "__main__":
    # DATABASE_URL=postgres://... python -m bench.stats_bench   (a database of your own, migrated)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifications_project.settings")
    import django

    django.setup()
    trigger_cost()
