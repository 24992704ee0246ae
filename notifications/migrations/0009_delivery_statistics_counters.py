"""Delivery statistics from counters (notifications.stats): what GET /api/v1/stats and the
admin's statistics page read instead of the day's notifications, so that their cost does not
grow with traffic.

Every figure is about the notifications accepted in a window, by the minute of their
created_at. A notification's contribution to the figures is its *key*: the minute it was
accepted, its client, channel and status, the minute of its sent_at and a latency bucket
(sent_at - created_at), and its failure reason when it is 'failed'. A status change moves one
count from its old key to its new one.

- notification_stats_delta: append-only. Statement-level triggers on notification, with their
  transition tables, write one row per key a statement changed, with the net count (-1 for each
  old row, +1 for each new row, grouped: 100 rows of one minute going queued -> sending are two
  rows here). INSERT only, no index and no key: no lock that another transaction waits for, so
  concurrent POSTs and dispatchers never serialise on a counter row.
- notification_stats_status / _sent / _latency / _failure: the totals, per minute
  (period_minutes 1) and per hour (period_minutes 60: a day's window reads 23 hour rows and at
  most 120 minute rows instead of 1,440 minute rows). Written only by notification_stats_fold(),
  which moves the deltas into them (DELETE ... RETURNING, then upserts in key order), one fold
  at a time (a transaction-level advisory lock; a fold that finds it taken does nothing). The
  stats read calls it first, and the housekeeping job `statistics` every minute.
- A read adds the totals and the deltas not folded yet, in one statement per figure, so its
  answer is exact whether or not a fold ran (a fold commits its delete and its upserts at once).

The latency is kept as a histogram: bucket 0 below 1 ms, then buckets 4% wide on a log scale
(bucket b >= 1 holds [1 ms * 1.04^(b-1), 1 ms * 1.04^b)), each with its count and the exact sum
of its latencies in microseconds. notifications.stats interpolates percentiles as
percentile_cont does, from each bucket's mean: exact when a bucket's latencies are equal, and
always within 4% (below 1 ms: within 1 ms).

Only notifications accepted in the last 25 hours are counted (the day's window and an hour's
margin): a change to an older one, and retention's deletes, add nothing. Minutes older than
that are pruned (notification_stats_prune, by the same job). A TRUNCATE of notification empties
the counters.

The migration creates the triggers first, then counts the notifications of the last 25 hours
(notification_stats_backfill): CREATE TRIGGER's lock on notification (SHARE ROW EXCLUSIVE)
holds back every write to it until the migration commits, so none is counted twice or missed.
"""

from django.db import migrations

# The key of a notification's row (fields of a transition table's row `r`) and its latency in
# microseconds. Written once here, used by the triggers and the backfill.
KEY_COLUMNS = "minute, client_id, channel, status, sent_minute, latency_bucket, failure_reason"
ROW_KEY = """
    date_trunc('minute', r.created_at) AS minute, r.client_id, r.channel, r.status,
    date_trunc('minute', r.sent_at) AS sent_minute,
    notification_stats_latency_bucket(notification_stats_latency_us(r.created_at, r.sent_at)) AS latency_bucket,
    CASE WHEN r.status = 'failed' THEN coalesce(nullif(left(r.last_error, 500), ''), '(no error recorded)') END
        AS failure_reason,
    notification_stats_latency_us(r.created_at, r.sent_at) AS latency_us
"""
# Notifications accepted before this are not counted (no window reaches them).
COUNTED_SINCE = "statement_timestamp() - interval '25 hours'"


def _delta_insert(changed_rows: str) -> str:
    """The INSERT of a trigger: `changed_rows` yields the columns of ROW_KEY and a sign for
    each row of the transition tables; the changes are netted per key and keys that net to nothing are left out."""
    return f"""
        INSERT INTO notification_stats_delta ({KEY_COLUMNS}, n, latency_us)
        SELECT {KEY_COLUMNS}, sum(sign)::int, sum(sign * latency_us)
        FROM (SELECT {ROW_KEY}, r.sign FROM ({changed_rows}) AS r) AS keyed
        GROUP BY {KEY_COLUMNS}
        HAVING sum(sign) <> 0 OR sum(sign * latency_us) <> 0;
    """


# The columns ROW_KEY reads, and +1 or -1.
_CHANGED = "SELECT created_at, client_id, channel, status, sent_at, last_error, {sign} AS sign FROM {rows} " \
           f"WHERE created_at >= {COUNTED_SINCE}"
INSERTED = _CHANGED.format(sign=1, rows="new_rows")
UPDATED = f"{_CHANGED.format(sign=-1, rows='old_rows')} UNION ALL {_CHANGED.format(sign=1, rows='new_rows')}"
DELETED = _CHANGED.format(sign=-1, rows="old_rows")

# The fold's lock: pg_try_advisory_xact_lock(FOLD_LOCK_KEY), "stats" in ASCII.
FOLD_LOCK_KEY = 0x7374617473

TOTALS = {
    # table: (key columns after period_minutes, period_start, client_id; the delta rows it takes)
    "notification_stats_status": ("channel, status", "TRUE"),
    "notification_stats_sent": ("sent_minute", "sent_minute IS NOT NULL"),
    "notification_stats_latency": ("channel, latency_bucket", "latency_bucket IS NOT NULL"),
    "notification_stats_failure": ("channel, failure_reason", "failure_reason IS NOT NULL"),
}


def _fold_upsert(table: str, keys: str, rows: str) -> str:
    latency = ", latency_us" if table == "notification_stats_latency" else ""
    summed = ", sum(latency_us)" if latency else ""
    updated = ", latency_us = t.latency_us + EXCLUDED.latency_us" if latency else ""
    key = f"period_minutes, period_start, client_id, {keys}"
    return f"""
    {table}_folded AS (
        INSERT INTO {table} AS t ({key}, n{latency})
        SELECT {key}, sum(n){summed} FROM periods WHERE {rows}
        GROUP BY {key}
        ORDER BY {key}  -- one order for every fold: upserts never wait on each other in a cycle
        ON CONFLICT ({key}) DO UPDATE SET n = t.n + EXCLUDED.n{updated}
    )"""


SQL = f"""
-- Latency in microseconds (NULL until sent); never negative.
CREATE FUNCTION notification_stats_latency_us(created_at timestamptz, sent_at timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN sent_at IS NOT NULL
                THEN greatest(0, round(date_part('epoch', sent_at - created_at) * 1000000))::bigint END
$$;

-- Its histogram bucket: 0 below 1 ms, then 4% wide on a log scale (notifications.stats
-- LATENCY_BUCKET_RATIO).
CREATE FUNCTION notification_stats_latency_bucket(latency_us bigint) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN latency_us < 1000 THEN 0
                ELSE 1 + floor(ln(latency_us / 1000.0::float8) / ln(1.04::float8)) END::smallint
$$;

CREATE TABLE notification_stats_delta (
    minute timestamptz NOT NULL,
    client_id bigint NOT NULL,
    channel text NOT NULL,
    status text NOT NULL,
    sent_minute timestamptz,
    latency_bucket smallint,
    failure_reason text,
    n integer NOT NULL,
    latency_us bigint
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000);
-- (Vacuumed after every 5,000 dead rows: each fold deletes what it read, and reads scan it.)

CREATE TABLE notification_stats_status (
    period_minutes smallint NOT NULL, period_start timestamptz NOT NULL, client_id bigint NOT NULL,
    channel text NOT NULL, status text NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (period_minutes, period_start, client_id, channel, status)
);
CREATE TABLE notification_stats_sent (
    period_minutes smallint NOT NULL, period_start timestamptz NOT NULL, client_id bigint NOT NULL,
    sent_minute timestamptz NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (period_minutes, period_start, client_id, sent_minute)
);
CREATE TABLE notification_stats_latency (
    period_minutes smallint NOT NULL, period_start timestamptz NOT NULL, client_id bigint NOT NULL,
    channel text NOT NULL, latency_bucket smallint NOT NULL, n bigint NOT NULL, latency_us bigint NOT NULL,
    PRIMARY KEY (period_minutes, period_start, client_id, channel, latency_bucket)
);
CREATE TABLE notification_stats_failure (
    period_minutes smallint NOT NULL, period_start timestamptz NOT NULL, client_id bigint NOT NULL,
    channel text NOT NULL, failure_reason text NOT NULL, n bigint NOT NULL,
    PRIMARY KEY (period_minutes, period_start, client_id, channel, failure_reason)
);

-- The counting triggers' function: one INSERT into the delta table per statement.
CREATE FUNCTION notification_stats_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_delta_insert(INSERTED)}
    ELSIF TG_OP = 'UPDATE' THEN
        {_delta_insert(UPDATED)}
    ELSIF TG_OP = 'DELETE' THEN
        {_delta_insert(DELETED)}
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION notification_stats_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM notification_stats_delta;
    DELETE FROM notification_stats_status;
    DELETE FROM notification_stats_sent;
    DELETE FROM notification_stats_latency;
    DELETE FROM notification_stats_failure;
    RETURN NULL;
END
$$;

-- Move the deltas into the totals (minute and hour rows); returns how many delta rows it
-- folded, or NULL when another fold holds the lock (that one folds them).
CREATE FUNCTION notification_stats_fold() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock({FOLD_LOCK_KEY}) THEN
        RETURN NULL;
    END IF;
    WITH taken AS (
        DELETE FROM notification_stats_delta RETURNING *
    ), periods AS (
        SELECT 1 AS period_minutes, minute AS period_start, * FROM taken
        UNION ALL
        SELECT 60, date_trunc('hour', minute, 'UTC'), * FROM taken
    ),{",".join(_fold_upsert(table, keys, rows) for table, (keys, rows) in TOTALS.items())}
    SELECT count(*) INTO folded FROM taken;
    RETURN folded;
END
$$;

-- Delete the totals of minutes before `before`, and those that came to nothing (n = 0: a
-- minute's 'queued' once they are all sent). Under the fold's lock, waiting for it.
CREATE FUNCTION notification_stats_prune(before timestamptz) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    total bigint := 0;
    deleted bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({FOLD_LOCK_KEY});
    DELETE FROM notification_stats_status WHERE period_start < before OR n = 0;
    GET DIAGNOSTICS deleted = ROW_COUNT; total := total + deleted;
    DELETE FROM notification_stats_sent WHERE period_start < before OR n = 0;
    GET DIAGNOSTICS deleted = ROW_COUNT; total := total + deleted;
    DELETE FROM notification_stats_latency WHERE period_start < before OR n = 0;
    GET DIAGNOSTICS deleted = ROW_COUNT; total := total + deleted;
    DELETE FROM notification_stats_failure WHERE period_start < before OR n = 0;
    GET DIAGNOSTICS deleted = ROW_COUNT; total := total + deleted;
    RETURN total;
END
$$;

-- Count the notifications already in the table (accepted in the last 25 hours) as deltas, and
-- fold them. For the migration, and for a table filled with the triggers disabled; the
-- counters must hold nothing of those rows yet.
CREATE FUNCTION notification_stats_backfill() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notification_stats_delta ({KEY_COLUMNS}, n, latency_us)
    SELECT {KEY_COLUMNS}, count(*), sum(latency_us)
    FROM (SELECT {ROW_KEY} FROM notification r WHERE r.created_at >= {COUNTED_SINCE}) AS keyed
    GROUP BY {KEY_COLUMNS};
    PERFORM pg_advisory_xact_lock({FOLD_LOCK_KEY});  -- wait for a running fold: this one must run
    RETURN notification_stats_fold();
END
$$;

CREATE TRIGGER notification_stats_inserted AFTER INSERT ON notification
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION notification_stats_count();
CREATE TRIGGER notification_stats_updated AFTER UPDATE ON notification
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION notification_stats_count();
CREATE TRIGGER notification_stats_deleted AFTER DELETE ON notification
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION notification_stats_count();
CREATE TRIGGER notification_stats_truncated AFTER TRUNCATE ON notification
    FOR EACH STATEMENT EXECUTE FUNCTION notification_stats_truncated();

SELECT notification_stats_backfill();
"""

DROP_SQL = """
DROP TRIGGER notification_stats_truncated ON notification;
DROP TRIGGER notification_stats_deleted ON notification;
DROP TRIGGER notification_stats_updated ON notification;
DROP TRIGGER notification_stats_inserted ON notification;
DROP FUNCTION notification_stats_backfill();
DROP FUNCTION notification_stats_prune(timestamptz);
DROP FUNCTION notification_stats_fold();
DROP FUNCTION notification_stats_truncated();
DROP FUNCTION notification_stats_count();
DROP TABLE notification_stats_failure, notification_stats_latency, notification_stats_sent,
           notification_stats_status, notification_stats_delta;
DROP FUNCTION notification_stats_latency_bucket(bigint);
DROP FUNCTION notification_stats_latency_us(timestamptz, timestamptz);
"""


def create_schedules(apps, schema_editor):
    from notifications.housekeeping import ensure_schedules

    ensure_schedules(apps.get_model("django_q", "Schedule"))


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="housekeeping: statistics").delete()


class Migration(migrations.Migration):

    dependencies = [
        ("notifications", "0008_notification_client_without_own_index_and_constraint"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunSQL(SQL, DROP_SQL),
        migrations.RunPython(create_schedules, delete_schedule),
    ]
