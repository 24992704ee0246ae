"""The statistics' counters (migration notifications 0009) against the notifications
themselves: after every kind of status change, made by the real statements of outbox/sql.py
(intake, claim, start, record, retry, failover, lease lost, cancel, resend, expiry, receipts)
and by the ORM, notification_stats() equals figures computed here from the rows; and the fold,
the backfill, the pruning and TRUNCATE keep them so."""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from datetime import timedelta

import psycopg
import pytest
from django.db import connection

from channels.receipts import DELIVERED, UNDELIVERED, Receipt
from notifications.ids import new_notification_id
from notifications.models import Notification, Suppression
from notifications.stats import (
    NO_REASON,
    REASON_MAX_CHARS,
    TOP_FAILURE_REASONS,
    fold_counters,
    notification_stats,
    prune_counters,
)
from outbox import store
from tests.helpers import database_url, tenant

FOLD_LOCK_KEY = 0x7374617473  # notification_stats_fold()'s advisory lock (migration 0009)

pytestmark = pytest.mark.django_db


def db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


def deltas() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notification_stats_delta")
        return cursor.fetchone()[0]


def percentile_cont(values: list[float], p: float) -> float:
    values = sorted(values)
    rank = p * (len(values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (rank - low) * (values[high] - values[low])


def expected_window(rows, since, current_minute, minutes, day_since):
    """A window's figures computed from the notification rows, as the scan before counters did."""
    mine = [r for r in rows if since <= r.created_at.replace(second=0, microsecond=0) <= current_minute]
    by_status = Counter(r.status for r in mine)
    by_channel = defaultdict(Counter)
    for r in mine:
        by_channel[r.channel][r.status] += 1
    sent = Counter(r.sent_at.replace(second=0, microsecond=0) for r in mine if r.sent_at is not None
                   and day_since <= r.sent_at.replace(second=0, microsecond=0) <= current_minute)
    series = [sent.get(since + timedelta(minutes=i), 0) for i in range(minutes)]
    latency = defaultdict(list)
    for r in mine:
        if r.sent_at is not None:
            latency[r.channel].append(max(0.0, (r.sent_at - r.created_at).total_seconds()))
    reasons, channels = Counter(), defaultdict(set)
    for r in mine:
        if r.status == "failed":
            reason = r.last_error[:REASON_MAX_CHARS] or NO_REASON
            reasons[reason] += 1
            channels[reason].add(r.channel)
    top = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:TOP_FAILURE_REASONS]
    return {
        "accepted": len(mine),
        "by_status": {s: n for s, n in by_status.items()},
        "by_channel": {c: dict(counts) for c, counts in by_channel.items()},
        "series": series,
        "latency": {c: (len(v), [percentile_cont(v, p) for p in (0.5, 0.95, 0.99)]) for c, v in latency.items()},
        "failures": [(reason, n, sorted(channels[reason])) for reason, n in top],
    }


def assert_exact(client=None):
    """notification_stats() equals the figures of the rows, counts exactly and latency within
    the histogram's 4%."""
    stats = notification_stats(client=client)
    rows = list(Notification.objects.all() if client is None else Notification.objects.filter(client=client))
    current_minute = stats["generated_at"].replace(second=0, microsecond=0)
    for name in ("hour", "day"):
        window = stats[name]
        expected = expected_window(rows, window["since"], current_minute, window["minutes"], stats["day"]["since"])
        assert window["accepted"] == expected["accepted"]
        assert {s: n for s, n in window["by_status"].items() if n} == expected["by_status"]
        assert {row["channel"]: {s: n for s, n in row["by_status"].items() if n} for row in window["by_channel"]} \
            == expected["by_channel"]
        assert [p["count"] for p in window["deliveries_per_minute"]] == expected["series"]
        assert window["delivered"] == sum(expected["series"])
        latency = {row["channel"]: row for row in window["latency_seconds"]}
        assert {c: row["count"] for c, row in latency.items()} == {c: n for c, (n, _) in expected["latency"].items()}
        for channel, (_, percentiles) in expected["latency"].items():
            for key, value in zip(("p50", "p95", "p99"), percentiles):
                assert latency[channel][key] == pytest.approx(value, rel=0.04, abs=0.001), (channel, key)
        assert [(r["reason"], r["count"], r["channels"]) for r in window["top_failure_reasons"]] == expected["failures"]
    return stats


def new(channel="fake", recipient=None, **fields):
    return store.NewNotification(id=new_notification_id(), channel=channel,
                                 recipient=recipient or f"u{uuid.uuid4().hex[:8]}@example.com", message="m", **fields)


def outcome(delivery, status, **fields):
    return store.Outcome(delivery=delivery, status=status, **fields)


def claim_started(limit, *, channels=("fake", "email-log"), lease=60.0, max_attempts=None):
    deliveries = store.claim(dispatcher="d1", limit=limit, lease_seconds=lease, channels=channels,
                             max_attempts=max_attempts)
    startable = store.start([d for d in deliveries if not d.started], dispatcher="d1") if deliveries else set()
    return [d for d in deliveries if d.started or d.outbox_id in startable]


def test_counts_stay_exact_through_every_kind_of_status_change():
    me, other = tenant("tests"), tenant("other")
    Suppression.objects.create(client=me, kind="test", recipient="gone@example.com", reason="bounced")

    # Intake: a batch, single rows, one scheduled, one suppressed, another client's.
    store.enqueue([new() for _ in range(40)], client_id=me.pk)
    for _ in range(3):
        store.enqueue([new("email-log")], client_id=me.pk)
    store.enqueue([new(send_at=db_now() + timedelta(hours=2))], client_id=me.pk)
    store.enqueue([new(recipient="gone@example.com", kind="test")], client_id=me.pk)
    store.enqueue([new("sms-log") for _ in range(4)], client_id=other.pk)
    assert_exact()
    assert_exact(me)

    # Claim (started by START and by CLAIM itself), then RECORD: sent, failed (two reasons,
    # one of them 600 characters long), retrying, failed over to another channel.
    deliveries = claim_started(30)
    assert len(deliveries) == 30
    long_reason = "provider said no: " + "x" * 600
    outcomes = (
        [outcome(d, "sent", provider_message_id=f"pm-{i}") for i, d in enumerate(deliveries[:12])]
        + [outcome(d, "failed", error="550 mailbox unavailable") for d in deliveries[12:16]]
        + [outcome(d, "failed", error=long_reason) for d in deliveries[16:18]]
        + [outcome(d, "retrying", error="timeout", retry_delay=0) for d in deliveries[18:22]]
        + [outcome(d, "retrying", error="breaker", retry_delay=0, move_to="email-log") for d in deliveries[22:25]]
    )  # 25..29 stay sending
    assert store.record_outcomes(outcomes, dispatcher="d1") == len(outcomes)
    assert_exact()

    # Cancel queued ones; resend sent and failed ones (a failure reason leaves its count).
    queued = list(Notification.objects.filter(client=me, status="queued").values_list("id", flat=True)[:2])
    for nid in queued:
        assert store.cancel(notification_id=nid, client_id=me.pk, note="by test")[1]
    resent = [deliveries[0], deliveries[1], deliveries[12], deliveries[16]]
    for d in resent:
        assert store.resend(notification_id=uuid.UUID(d.notification_id), client_id=me.pk, note="again")[1]
    assert_exact()

    # Receipts: delivered and undelivered (a bounce sets last_error, but the status is not 'failed').
    kinds = {"fake": "test", "email-log": "test", "sms-log": "sms"}
    store.record_receipts([
        Receipt(source="test", kind="test", provider_message_id="pm-2", outcome=DELIVERED, provider_status="delivered"),
        Receipt(source="test", kind="test", provider_message_id="pm-3", outcome=UNDELIVERED, provider_status="bounced",
                error_code="550", detail="no such user"),
    ], channel_kinds=kinds)
    assert Notification.objects.filter(status__in=["delivered", "undelivered"]).count() == 2
    assert_exact()

    # The resent ones and the retries are sent again: sent_at moves, and with it the latency.
    again = claim_started(100)
    store.record_outcomes([outcome(d, "sent", provider_message_id=f"pm-again-{i}") for i, d in enumerate(again)],
                          dispatcher="d1")
    assert_exact()

    # A lease lost during the send: 'retrying' at the next claim, then 'failed' once out of attempts.
    store.enqueue([new() for _ in range(3)], client_id=me.pk)
    lost = claim_started(3, lease=0.0)
    assert len(lost) == 3
    assert claim_started(1, max_attempts=5, lease=0.0)  # re-claims one: 'retrying', started again
    store.claim(dispatcher="d2", limit=10, lease_seconds=60, channels=("fake",), max_attempts=1)  # the rest: 'failed'
    assert Notification.objects.filter(last_error__startswith="outcome unknown").exists()
    assert_exact()

    # Expiry at START.
    store.enqueue([new(expires_at=db_now() - timedelta(seconds=1))], client_id=me.pk)
    leased = store.claim(dispatcher="d1", limit=10, lease_seconds=60, channels=("fake",))
    store.start(leased, dispatcher="d1")
    assert Notification.objects.filter(status="expired").count() == 1
    assert_exact()

    # Failover from an open breaker: due rows move channel.
    store.enqueue([new() for _ in range(5)], client_id=me.pk)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO channel_state (channel, tokens, refilled_at, failures, successes, breaker, "
                       "breaker_until, changed_at) VALUES ('fake', 0, now(), 5, 0, 'open', now() + interval '1 hour', now())")
    assert store.failover_from_open(channels=["fake"], routes={"fake": ["email-log"]}, dispatcher="d1") == 5
    assert_exact()

    # The admin and the ORM: an edit of status, reason and channel; a delete; a save.
    some = Notification.objects.filter(client=me, status="sent").first()
    Notification.objects.filter(pk=some.pk).update(status="failed", last_error="marked failed by hand")
    Notification.objects.filter(client=other).first().delete()
    edited = Notification.objects.filter(client=me, status="failed").first()
    edited.channel, edited.last_error = "webhook", "edited"
    edited.save()
    assert_exact()
    assert_exact(me)
    assert_exact(other)

    # Older than the kept 25 hours: written and changed, counted nowhere.
    old = Notification.objects.create(client=me, channel="fake", recipient="x", message="m", status="sent",
                                      created_at=db_now() - timedelta(hours=30), sent_at=db_now() - timedelta(hours=30))
    store.resend(notification_id=old.pk, client_id=me.pk, note="old")
    assert_exact()


def test_hot_statements_write_few_delta_rows():
    """The triggers net a statement's changes per key: a batch of 1,000 writes a row per minute
    and status, a claim of 100 two per minute (queued -1, sending +1)."""
    me = tenant("tests")
    fold_counters()
    store.enqueue([new() for _ in range(1000)], client_id=me.pk)
    assert 1 <= deltas() <= 2
    fold_counters()
    assert deltas() == 0
    deliveries = claim_started(100, channels=("fake",))
    assert len(deliveries) == 100 and 2 <= deltas() <= 4
    # A statement that changes nothing the figures use writes nothing.
    fold_counters()
    Notification.objects.filter(client=me).update(subject="s", metadata={"a": 1})
    assert deltas() == 0
    assert_exact()


@pytest.mark.django_db(transaction=True)  # each fold's lock ends with its own transaction
def test_the_fold_moves_deltas_into_totals_and_reads_see_both():
    me = tenant("tests")
    store.enqueue([new() for _ in range(10)], client_id=me.pk)
    assert deltas() > 0
    assert_exact()
    assert deltas() == 0  # the read folded them first
    with connection.cursor() as cursor:
        cursor.execute("SELECT period_minutes, sum(n) FROM notification_stats_status GROUP BY 1 ORDER BY 1")
        assert cursor.fetchall() == [(1, 10), (60, 10)]  # minute and hour totals

    # While another session folds (it holds the lock), a read folds nothing and adds the
    # deltas to the totals itself.
    store.enqueue([new() for _ in range(5)], client_id=me.pk)
    with psycopg.connect(database_url(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [FOLD_LOCK_KEY])
        assert fold_counters() is None
        stats = assert_exact()
        assert stats["day"]["accepted"] == 15 and deltas() > 0
    assert fold_counters() > 0 and fold_counters() == 0
    assert assert_exact()["day"]["accepted"] == 15


def test_backfill_counts_rows_written_without_the_triggers_and_prune_keeps_the_figures():
    me = tenant("tests")
    with connection.cursor() as cursor:
        for trigger in ("notification_stats_inserted", "notification_stats_updated"):
            cursor.execute(f"ALTER TABLE notification DISABLE TRIGGER {trigger}")
        cursor.execute(
            "INSERT INTO notification (id, client_id, channel, recipient, subject, message, metadata, status, attempts,"
            " last_error, provider_message_id, priority, created_at, updated_at, sent_at)"
            " SELECT gen_random_uuid(), %s, 'fake', 'x', '', 'm', '{}',"
            "        (ARRAY['sent', 'failed', 'queued', 'delivered'])[1 + i %% 4], 1,"
            "        CASE WHEN i %% 4 = 1 THEN 'reason ' || (i %% 3) ELSE '' END, '', 1,"
            "        now() - i * interval '37 seconds', now(),"
            "        CASE WHEN i %% 4 IN (0, 3) THEN now() - i * interval '37 seconds' + (i %% 50) * interval '10 ms' END"
            " FROM generate_series(0, 2999) AS i",  # 3,000 over the last 31 hours
            [me.pk])
        for trigger in ("notification_stats_inserted", "notification_stats_updated"):
            cursor.execute(f"ALTER TABLE notification ENABLE TRIGGER {trigger}")
        cursor.execute("SELECT notification_stats_backfill()")
    assert_exact()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notification_stats_status"
                       " WHERE period_minutes = 1 AND period_start < now() - interval '25 hours 1 minute'")
        assert cursor.fetchone()[0] == 0  # older rows are not counted at all
        cursor.execute("SELECT count(*) FROM notification_stats_latency")
        latency_rows = cursor.fetchone()[0]
    # Pruned 10 hours later: the totals of minutes older than 25 hours go, and so do zero ones.
    Notification.objects.filter(status="queued").update(status="cancelled")  # queued totals come to zero
    fold_counters()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notification_stats_status WHERE n = 0")
        zeros = cursor.fetchone()[0]
    assert zeros > 0
    assert prune_counters() >= zeros
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notification_stats_status WHERE n = 0")
        assert cursor.fetchone()[0] == 0
    assert_exact()
    pruned = prune_counters(now=db_now() + timedelta(hours=10))
    assert pruned > 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notification_stats_latency")
        assert cursor.fetchone()[0] < latency_rows
        cursor.execute("SELECT min(period_start) >= now() - interval '15 hours' FROM notification_stats_status")
        assert cursor.fetchone()[0]


def test_truncate_empties_the_counters():
    store.enqueue([new() for _ in range(3)], client_id=tenant("tests").pk)
    fold_counters()
    store.enqueue([new() for _ in range(3)], client_id=tenant("tests").pk)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE notification, notification_event, outbox")
        cursor.execute("SELECT (SELECT count(*) FROM notification_stats_delta) + (SELECT count(*) FROM notification_stats_status)")
        assert cursor.fetchone()[0] == 0
    assert notification_stats()["day"]["accepted"] == 0
