"""Retention and housekeeping (notifications.housekeeping): what goes, what stays, batches,
row locks, the management commands and the django-q2 schedules."""

from __future__ import annotations

import threading
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import Schedule, Success

from notifications import housekeeping
from notifications.models import IdempotencyKey, Notification, NotificationEvent
from outbox.models import OutboxEntry
from tests.helpers import database_url, enqueue, tenant

OLD = timedelta(days=40)


def make(status: str, age: timedelta, *, events: int = 2, in_outbox: bool = False) -> Notification:
    """A notification of `status` created `age` ago, with `events` history entries (and an
    outbox row if `in_outbox`)."""
    if in_outbox:
        (nid,) = enqueue(1, channel="fake")
        Notification.objects.filter(pk=nid).update(status=status, created_at=timezone.now() - age, updated_at=timezone.now() - age)
        notification = Notification.objects.get(pk=nid)
        NotificationEvent.objects.bulk_create(NotificationEvent(notification=notification, status=status) for _ in range(events - 1))
        return notification
    notification = Notification.objects.create(
        client=tenant(), channel="fake", recipient="someone", message="m", status=status,
        created_at=timezone.now() - age, updated_at=timezone.now() - age,
    )
    NotificationEvent.objects.bulk_create(NotificationEvent(notification=notification, status=status) for _ in range(events))
    return notification


def exists(notification: Notification) -> bool:
    return Notification.objects.filter(pk=notification.pk).exists()


def test_retention_deletes_old_finished_notifications_with_their_history(db):
    gone = [make(status, OLD) for status in ("sent", "failed", "cancelled", "expired")]
    recent = [make(status, timedelta(days=29)) for status in ("sent", "failed", "cancelled", "expired")]
    unfinished_old = [make(status, OLD, in_outbox=True) for status in ("queued", "scheduled", "retrying", "sending")]
    # A finished status but still in the outbox (resent meanwhile): never touched.
    sent_but_in_outbox = make("sent", OLD, in_outbox=True)
    # An old notification still waiting without an outbox row is not finished: kept too.
    queued_without_outbox = make("queued", OLD)
    # Accepted long ago, but resent and sent again recently: kept for the retention after that.
    resent_recently = make("sent", OLD)
    Notification.objects.filter(pk=resent_recently.pk).update(updated_at=timezone.now() - timedelta(days=1))

    result = housekeeping.delete_finished_notifications()

    assert result["notifications"] == 4 and result["events"] == 8 and result["batches"] == 1
    assert not any(exists(n) for n in gone)
    assert not NotificationEvent.objects.filter(notification_id__in=[n.pk for n in gone]).exists()
    for kept in [*recent, *unfinished_old, sent_but_in_outbox, queued_without_outbox, resent_recently]:
        assert exists(kept)
        assert NotificationEvent.objects.filter(notification_id=kept.pk).count() == 2
    assert OutboxEntry.objects.count() == 5


def test_retention_days_come_from_the_setting(db, settings):
    settings.NOTIFY_RETENTION_DAYS = 7
    week_old = make("sent", timedelta(days=8))
    fresh = make("sent", timedelta(days=6))
    assert housekeeping.delete_finished_notifications()["notifications"] == 1
    assert not exists(week_old) and exists(fresh)
    assert housekeeping.delete_finished_notifications(retention_days=5)["notifications"] == 1
    assert not exists(fresh)


def test_retention_goes_in_batches_of_the_batch_size(db):
    old = [make("sent", OLD - timedelta(hours=i)) for i in range(5)]  # old[4] is the newest
    with CaptureQueriesContext(connection) as queries:
        result = housekeeping.delete_finished_notifications(batch_size=2)
    assert result == {**result, "notifications": 5, "events": 10, "batches": 3}
    deletes = [q for q in queries.captured_queries if "DELETE FROM notification n" in q["sql"]]
    assert len(deletes) == 3 and all("LIMIT 2" in q["sql"] for q in deletes)
    assert not any(exists(n) for n in old)


def test_a_time_budget_stops_after_a_batch_oldest_first(db):
    old = [make("failed", OLD + timedelta(hours=i)) for i in range(5)]  # old[4] is the oldest
    result = housekeeping.delete_finished_notifications(batch_size=2, max_seconds=1e-6)
    assert (result["notifications"], result["batches"]) == (2, 1)
    assert [exists(n) for n in old] == [True, True, True, False, False]


def test_retention_skips_rows_locked_by_others_instead_of_waiting(transactional_db):
    busy, free = make("sent", OLD), make("sent", OLD)
    other = psycopg.connect(database_url(), autocommit=False)
    try:
        other.execute("SELECT 1 FROM notification WHERE id = %s FOR UPDATE", [busy.pk])
        results = []

        def run():
            try:
                results.append(housekeeping.delete_finished_notifications())
            finally:
                connection.close()  # this thread's own connection

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "retention waited for a locked row"
        assert results[0]["notifications"] == 1
        assert exists(busy) and not exists(free)
    finally:
        other.rollback()
        other.close()
    assert housekeeping.delete_finished_notifications()["notifications"] == 1  # taken by the next run
    assert not exists(busy)


def test_expired_idempotency_keys_are_deleted_live_ones_kept(db):
    now = timezone.now()
    client = tenant()

    def key(name: str, expires_in: timedelta) -> IdempotencyKey:
        return IdempotencyKey.objects.create(client=client, key=name, request_hash="h", notification_ids=[], expires_at=now + expires_in)

    expired = [key(f"old-{i}", -timedelta(minutes=i + 1)) for i in range(5)]
    live = [key(f"live-{i}", timedelta(hours=i + 1)) for i in range(3)]
    result = housekeeping.delete_expired_idempotency_keys(batch_size=2)
    assert (result["idempotency_keys"], result["batches"]) == (5, 3)
    assert not IdempotencyKey.objects.filter(pk__in=[k.pk for k in expired]).exists()
    assert IdempotencyKey.objects.filter(pk__in=[k.pk for k in live]).count() == 3


def test_dispatcher_records_gone_for_a_day_are_deleted(db):
    try:
        dispatcher = apps.get_model("outbox", "Dispatcher")
    except LookupError:
        assert housekeeping.delete_gone_dispatchers()["skipped"]
        pytest.skip("no dispatcher heartbeat model")
    now = timezone.now()

    def record(name: str, last_heartbeat_ago: timedelta, stopped: bool = False):
        return dispatcher.objects.create(
            id=name, host="h", pid=1, channels=["fake"], started_at=now - timedelta(days=3),
            last_heartbeat_at=now - last_heartbeat_ago, stopped_at=(now - last_heartbeat_ago) if stopped else None,
        )

    record("dead-long-ago", timedelta(hours=30))
    record("stopped-long-ago", timedelta(days=2), stopped=True)
    record("dead-recently", timedelta(hours=2))
    record("alive", timedelta(seconds=3))
    result = housekeeping.delete_gone_dispatchers()
    assert result["dispatchers"] == 2
    assert sorted(dispatcher.objects.values_list("pk", flat=True)) == ["alive", "dead-recently"]


def test_the_housekeeping_command_runs_each_job_and_all(db):
    make("sent", OLD)
    IdempotencyKey.objects.create(client=tenant(), key="k", request_hash="h", notification_ids=[],
                                  expires_at=timezone.now() - timedelta(seconds=1))
    out = StringIO()
    call_command("housekeeping", "--job", "retention", "--batch-size", "10", stdout=out)
    assert "retention: notifications 1, events 2, receipts 0, batches 1" in out.getvalue()
    out = StringIO()
    call_command("housekeeping", stdout=out)  # --job all
    text = out.getvalue()
    assert "retention: notifications 0" in text and "idempotency: idempotency_keys 1" in text and "dispatchers:" in text
    make("failed", timedelta(days=3))
    out = StringIO()
    call_command("housekeeping", "--job", "retention", "--retention-days", "2", stdout=out)
    assert "retention: notifications 1" in out.getvalue()
    with pytest.raises(CommandError):
        call_command("housekeeping", "--batch-size", "0")
    with pytest.raises(CommandError):
        call_command("housekeeping", "--job", "nonsense")


def test_the_schedules_exist_after_migrate_and_setup_is_idempotent(db):
    def schedules():
        return {s.name: (s.func, s.schedule_type, s.minutes, s.repeats)
                for s in Schedule.objects.filter(name__startswith="housekeeping:")}

    expected = {name: (func, Schedule.MINUTES, minutes, -1) for name, (func, minutes) in housekeeping.SCHEDULES.items()}
    assert schedules() == expected  # created by the migration
    assert set(f for f, _ in housekeeping.SCHEDULES.values()) == {
        "notifications.housekeeping.scheduled_retention",
        "notifications.housekeeping.scheduled_idempotency",
        "notifications.housekeeping.scheduled_dispatchers",
        "notifications.housekeeping.scheduled_statistics",
        "notifications.housekeeping.scheduled_rate_counters",
    }
    next_runs = dict(Schedule.objects.values_list("name", "next_run"))

    call_command("setup_schedules", stdout=StringIO())
    call_command("setup_schedules", stdout=StringIO())
    assert schedules() == expected and Schedule.objects.filter(name__startswith="housekeeping:").count() == 5
    assert dict(Schedule.objects.values_list("name", "next_run")) == next_runs  # next runs kept

    # A deleted, altered or duplicated schedule is put right.
    Schedule.objects.filter(name="housekeeping: retention").delete()
    Schedule.objects.filter(name="housekeeping: dispatchers").update(minutes=5, func="x.y")
    Schedule.objects.create(name="housekeeping: idempotency keys", func="x.y", schedule_type=Schedule.DAILY)
    out = StringIO()
    call_command("setup_schedules", stdout=out)
    assert "housekeeping: retention: notifications.housekeeping.scheduled_retention every 60 min" in out.getvalue()
    assert schedules() == expected and Schedule.objects.filter(name__startswith="housekeeping:").count() == 5


def test_the_scheduled_functions_run_as_django_q_tasks(db):
    from django_q.tasks import async_task

    stale = make("expired", OLD)
    for name, (func, _) in housekeeping.SCHEDULES.items():
        task_id = async_task(func, sync=True)
        task = Success.objects.get(id=task_id)
        assert task.success and task.result["job"] in ("retention", "idempotency", "dispatchers", "statistics",
                                                        "rate_counters"), task.result
    assert not exists(stale)


def test_the_retention_batch_is_a_range_scan_of_the_created_at_index(db):
    """With 40 days of history (a quarter of it past the retention), a batch picks its oldest
    rows through notification_created_idx and stops at the batch size, with no scan of the
    table. (The deletes by id then go through notification_pkey and the foreign key's index on
    notification_event at production sizes; on a table this small the planner may hash-join
    instead, which is cheaper there.)"""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO notification (id, client_id, channel, recipient, subject, message, metadata, status, attempts, "
            "last_error, provider_message_id, priority, created_at, updated_at) "
            "SELECT gen_random_uuid(), %s, 'fake', 'x', '', 'm', '{}', 'sent', 1, '', '', 1, t, t "
            "FROM (SELECT now() - i * interval '86 seconds' AS t FROM generate_series(1, 40000) AS i) AS s",
            [tenant().pk],
        )
        cursor.execute("INSERT INTO notification_event (notification_id, status, attempt, error, provider_message_id, "
                       "dispatcher, note, created_at) SELECT id, 'sent', 1, '', '', '', '', created_at FROM notification")
        cursor.execute("ANALYZE notification")
        cursor.execute("ANALYZE notification_event")
        cursor.execute("ANALYZE outbox")
        cursor.execute("EXPLAIN " + housekeeping.DELETE_FINISHED_NOTIFICATIONS, {
            "cutoff": timezone.now() - timedelta(days=30), "statuses": housekeeping.FINISHED_STATUSES, "limit": 1000,
        })
        plan = "\n".join(row[0] for row in cursor.fetchall())
    selection = plan.split("CTE events")[0]
    assert "Limit" in selection and "LockRows" in selection, plan
    assert "Index Scan using notification_created_idx on notification n" in selection, plan
    assert "Seq Scan on notification " not in selection and "Sort" not in selection, plan
