"""Retention and housekeeping: the jobs that keep the tables as small as the settings say.

- `delete_finished_notifications`: notifications that are finished (sent, delivered,
  undelivered, failed, suppressed, cancelled, expired), accepted more than NOTIFY_RETENTION_DAYS
  ago and unchanged since then (created_at and updated_at), with their history and status
  events; and the providers' receipts received before that. A notification that still has an
  outbox row is never touched, whatever its status.
- `delete_expired_idempotency_keys`: Idempotency-Keys past their expires_at.
- `fold_statistics`: the delivery statistics' counters (notifications.stats): folds the
  triggers' deltas into the per-minute and per-hour totals, and deletes the totals older than
  the day's window (and those that came to zero). Every minute, so that a stats read has
  little left to fold.
- `delete_idle_rate_counters`: the rate limit's counter rows (notifications.throttling) of
  clients that sent nothing for a day (their last window ended more than a day ago), and of
  deleted clients; the rows of active clients are reused window after window.
- `delete_gone_dispatchers`: dispatcher heartbeat rows (outbox.models.Dispatcher) whose last
  heartbeat is older than NOTIFY_DISPATCHER_RETENTION_HOURS (a process stopped or dead that
  long ago).

Each deletes in batches of NOTIFY_HOUSEKEEPING_BATCH_SIZE rows, one short transaction per
batch: the rows are picked with FOR UPDATE SKIP LOCKED, so a batch never waits for (nor
blocks for long) the API, the dispatchers or another housekeeping run, and a row that is busy
is simply taken by a later run. Each job returns what it deleted.

They run on a schedule through django-q2 (`python manage.py qcluster`; the schedules are
created by the migration notifications 0002 and by `python manage.py setup_schedules`), and by
hand with `python manage.py housekeeping --job retention|idempotency|rate_counters|dispatchers|all`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.apps import apps
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.db import connection, transaction

logger = logging.getLogger("notifications.housekeeping")

FINISHED_STATUSES = ["sent", "delivered", "undelivered", "failed", "suppressed", "cancelled", "expired"]

# One batch of retention, one statement: the oldest finished notifications past the cutoff
# that have no outbox row, locked (rows another transaction holds are skipped, not waited
# for), their history, then themselves. The history goes in the same statement because the
# foreign key has no ON DELETE CASCADE in the database (Django cascades in Python); the delete
# of the events uses the index on notification_event(notification_id) that the foreign key
# created. The ORDER BY makes it a range scan of notification_created_idx from the oldest row.
# updated_at (the last status change) must be past the cutoff too, so that an old notification
# resent recently is kept for the full retention after its new outcome. The status test is
# re-checked on a row that changed meanwhile (a resend makes it 'queued'), so a notification
# resent while this runs is kept.
DELETE_FINISHED_NOTIFICATIONS = """
WITH doomed AS (
    SELECT n.id
    FROM notification n
    WHERE n.created_at < %(cutoff)s
      AND n.updated_at < %(cutoff)s
      AND n.status = ANY(%(statuses)s::text[])
      AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.notification_id = n.id)
    ORDER BY n.created_at
    LIMIT %(limit)s
    FOR UPDATE OF n SKIP LOCKED
), events AS (
    DELETE FROM notification_event e USING doomed WHERE e.notification_id = doomed.id
    RETURNING 1
), status_events AS (  -- index status_event_sequence_unique (notification_id, sequence)
    DELETE FROM status_event s USING doomed WHERE s.notification_id = doomed.id
), notifications AS (
    DELETE FROM notification n USING doomed WHERE n.id = doomed.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM notifications), (SELECT count(*) FROM events)
"""

# Receipts are kept as long as notifications (index receipt_received_idx).
DELETE_OLD_RECEIPTS = """
DELETE FROM receipt WHERE id IN (SELECT id FROM receipt WHERE received_at < %(cutoff)s ORDER BY received_at
                                 LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
"""

# A key past its expires_at is free for reuse (outbox/sql.py, TAKE_IDEMPOTENCY_KEY); one that
# a request is renewing right now is locked by it and skipped, and re-checked if it changed.
DELETE_EXPIRED_IDEMPOTENCY_KEYS = """
WITH doomed AS (
    SELECT id FROM idempotency_key
    WHERE expires_at <= %(now)s
    ORDER BY expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM idempotency_key k USING doomed WHERE k.id = doomed.id
"""

# Counter rows whose window ended before the cutoff (table api_rate_counter: clients x shards
# rows, small enough for a sequential scan). A row a request is writing is skipped; a request
# that arrives while its row is being deleted waits for the delete and inserts the row anew.
DELETE_IDLE_RATE_COUNTERS = """
WITH doomed AS (
    SELECT client_id, shard FROM api_rate_counter
    WHERE window_start + make_interval(secs => period) < %(cutoff)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM api_rate_counter c USING doomed WHERE c.client_id = doomed.client_id AND c.shard = doomed.shard
"""

# A client's counter rows are kept this long after its last window ended.
RATE_COUNTER_IDLE = timedelta(days=1)


def _setting(name: str, default):
    return getattr(settings, name, default)


def _batch_size(batch_size: int | None) -> int:
    size = int(batch_size or _setting("NOTIFY_HOUSEKEEPING_BATCH_SIZE", 1000))
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return size


def _db_now() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


def _in_batches(run_batch, *, batch_size: int, max_seconds: float | None) -> tuple[int, int]:
    """Run `run_batch()` (-> rows deleted) in its own transaction until a batch comes back
    short or `max_seconds` is spent. Returns (batches, rows)."""
    deadline = time.monotonic() + max_seconds if max_seconds else None
    batches = rows = 0
    while True:
        with transaction.atomic():
            deleted = run_batch()
        batches += 1
        rows += deleted
        if deleted < batch_size or (deadline is not None and time.monotonic() >= deadline):
            return batches, rows


def delete_finished_notifications(
    *, retention_days: float | None = None, batch_size: int | None = None,
    now: datetime | None = None, max_seconds: float | None = None,
) -> dict:
    """Delete finished notifications created more than `retention_days` (NOTIFY_RETENTION_DAYS,
    default 30) before `now` (the database's clock), with their history."""
    days = float(retention_days if retention_days is not None else _setting("NOTIFY_RETENTION_DAYS", 30))
    limit = _batch_size(batch_size)
    cutoff = (now or _db_now()) - timedelta(days=days)
    events = 0

    def batch() -> int:
        nonlocal events
        with connection.cursor() as cursor:
            cursor.execute(DELETE_FINISHED_NOTIFICATIONS, {"cutoff": cutoff, "statuses": FINISHED_STATUSES, "limit": limit})
            notifications, deleted_events = cursor.fetchone()
        events += deleted_events
        return notifications

    def receipt_batch() -> int:
        with connection.cursor() as cursor:
            cursor.execute(DELETE_OLD_RECEIPTS, {"cutoff": cutoff, "limit": limit})
            return cursor.rowcount

    batches, notifications = _in_batches(batch, batch_size=limit, max_seconds=max_seconds)
    _, receipts = _in_batches(receipt_batch, batch_size=limit, max_seconds=max_seconds)
    result = {"job": "retention", "notifications": notifications, "events": events, "receipts": receipts,
              "batches": batches, "cutoff": cutoff.isoformat()}
    logger.info("housekeeping retention: deleted %d notifications and %d events created before %s in %d batch(es)",
                notifications, events, cutoff.isoformat(), batches)
    return result


def delete_expired_idempotency_keys(
    *, batch_size: int | None = None, now: datetime | None = None, max_seconds: float | None = None,
) -> dict:
    """Delete Idempotency-Keys whose expires_at is past (`now`, default the database's clock)."""
    limit = _batch_size(batch_size)
    moment = now or _db_now()

    def batch() -> int:
        with connection.cursor() as cursor:
            cursor.execute(DELETE_EXPIRED_IDEMPOTENCY_KEYS, {"now": moment, "limit": limit})
            return cursor.rowcount

    batches, keys = _in_batches(batch, batch_size=limit, max_seconds=max_seconds)
    logger.info("housekeeping idempotency: deleted %d expired keys in %d batch(es)", keys, batches)
    return {"job": "idempotency", "idempotency_keys": keys, "batches": batches}


def delete_idle_rate_counters(
    *, batch_size: int | None = None, now: datetime | None = None, max_seconds: float | None = None,
) -> dict:
    """Delete the rate counters of clients idle for a day (`now`, default the database's clock)."""
    limit = _batch_size(batch_size)
    cutoff = (now or _db_now()) - RATE_COUNTER_IDLE

    def batch() -> int:
        with connection.cursor() as cursor:
            cursor.execute(DELETE_IDLE_RATE_COUNTERS, {"cutoff": cutoff, "limit": limit})
            return cursor.rowcount

    batches, rows = _in_batches(batch, batch_size=limit, max_seconds=max_seconds)
    logger.info("housekeeping rate counters: deleted %d idle counter rows in %d batch(es)", rows, batches)
    return {"job": "rate_counters", "rate_counters": rows, "batches": batches}


def delete_gone_dispatchers(
    *, older_than_hours: float | None = None, batch_size: int | None = None,
    now: datetime | None = None, max_seconds: float | None = None,
) -> dict:
    """Delete dispatcher records whose last heartbeat is older than `older_than_hours`
    (NOTIFY_DISPATCHER_RETENTION_HOURS, default 24). Does nothing where the dispatcher
    heartbeat model (outbox.models.Dispatcher) does not exist."""
    try:
        model = apps.get_model("outbox", "Dispatcher")
        model._meta.get_field("last_heartbeat_at")
    except LookupError:
        return {"job": "dispatchers", "dispatchers": 0, "batches": 0, "skipped": "no dispatcher heartbeat model"}
    except FieldDoesNotExist:
        return {"job": "dispatchers", "dispatchers": 0, "batches": 0, "skipped": "no last_heartbeat_at field"}
    hours = float(older_than_hours if older_than_hours is not None else _setting("NOTIFY_DISPATCHER_RETENTION_HOURS", 24))
    limit = _batch_size(batch_size)
    cutoff = (now or _db_now()) - timedelta(hours=hours)

    def batch() -> int:
        ids = list(
            model.objects.select_for_update(skip_locked=True)
            .filter(last_heartbeat_at__lt=cutoff)
            .order_by("last_heartbeat_at")
            .values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return 0
        # Re-checked under the lock: a dispatcher that came back meanwhile is kept.
        _, by_model = model.objects.filter(pk__in=ids, last_heartbeat_at__lt=cutoff).delete()
        return by_model.get(model._meta.label, 0)

    batches, dispatchers = _in_batches(batch, batch_size=limit, max_seconds=max_seconds)
    logger.info("housekeeping dispatchers: deleted %d dispatcher records without a heartbeat since %s",
                dispatchers, cutoff.isoformat())
    return {"job": "dispatchers", "dispatchers": dispatchers, "batches": batches, "cutoff": cutoff.isoformat()}


def fold_statistics(**_options) -> dict:
    """Fold the statistics' deltas into their totals and prune the old totals (notifications.stats)."""
    from .stats import fold_counters, prune_counters

    folded = fold_counters()
    pruned = prune_counters()
    logger.info("housekeeping statistics: folded %s delta rows, pruned %d total rows", folded, pruned)
    return {"job": "statistics", "folded": folded, "pruned": pruned}


JOBS = {
    "retention": delete_finished_notifications,
    "statistics": fold_statistics,
    "idempotency": delete_expired_idempotency_keys,
    "rate_counters": delete_idle_rate_counters,
    "dispatchers": delete_gone_dispatchers,
}


def run_job(name: str, **options) -> dict:
    """Run one job by name ("retention", "statistics", "idempotency", "rate_counters", "dispatchers")."""
    return JOBS[name](**options)


# --- the scheduled entry points (django-q2 calls these by dotted path) --------------------------


def _scheduled_budget() -> float:
    # A scheduled run stops after this long, well inside the django-q task timeout; the next
    # run goes on where it stopped.
    return float(_setting("NOTIFY_HOUSEKEEPING_MAX_SECONDS", 300))


def scheduled_retention() -> dict:
    return delete_finished_notifications(max_seconds=_scheduled_budget())


def scheduled_idempotency() -> dict:
    return delete_expired_idempotency_keys(max_seconds=_scheduled_budget())


def scheduled_rate_counters() -> dict:
    return delete_idle_rate_counters(max_seconds=_scheduled_budget())


def scheduled_dispatchers() -> dict:
    return delete_gone_dispatchers(max_seconds=_scheduled_budget())


def scheduled_statistics() -> dict:
    return fold_statistics()


# name -> (function, minutes between runs). Hourly: each run is a few short batches; the
# statistics every minute (one fold of a minute's deltas).
SCHEDULES = {
    "housekeeping: statistics": ("notifications.housekeeping.scheduled_statistics", 1),
    "housekeeping: retention": ("notifications.housekeeping.scheduled_retention", 60),
    "housekeeping: idempotency keys": ("notifications.housekeeping.scheduled_idempotency", 60),
    "housekeeping: rate counters": ("notifications.housekeeping.scheduled_rate_counters", 60),
    "housekeeping: dispatchers": ("notifications.housekeeping.scheduled_dispatchers", 60),
}


def ensure_schedules(schedule_model=None) -> list[str]:
    """Create or update the django-q2 Schedule rows of the jobs (idempotent: keyed on their
    names; a schedule's next run is kept). Takes the historical model from a migration.
    Returns the names created."""
    if schedule_model is None:
        from django_q.models import Schedule as schedule_model
    created = []
    for name, (func, minutes) in SCHEDULES.items():
        rows = schedule_model.objects.filter(name=name).order_by("id")
        first = rows.first()
        if first is None:
            schedule_model.objects.create(name=name, func=func, schedule_type="I", minutes=minutes, repeats=-1)
            created.append(name)
            continue
        rows.exclude(pk=first.pk).delete()  # Schedule.name is not unique: keep one
        changed = {"func": func, "schedule_type": "I", "minutes": minutes, "repeats": -1}
        if any(getattr(first, key) != value for key, value in changed.items()):
            rows.filter(pk=first.pk).update(**changed)
    return created
