"""A history of finished notifications, written fast in plain SQL, for the "at 1m history" figures.

A deployment keeps its finished notifications for NOTIFY_RETENTION_DAYS (30), so its tables
hold millions of rows that the intake and the dispatchers never touch again, except through
the indexes every new row is added to. fill() writes such a history: notifications `sent`
to the `fake` channel, each with the two events a real one has (its 'queued' event at
acceptance, its 'sent' event with the provider's message id), spread over the last 20 days
(inside the retention, so that no housekeeping job deletes them during a measurement).

It goes in as two INSERT ... SELECT generate_series statements in one transaction, not
through outbox.store.enqueue: 1,000,000 notifications through the intake would take
minutes, and what is measured is how the new rows fare beside the old ones, not how the old
ones got there. The rows are what the product's statements would have left: the same
columns, UUIDv7 ids in created_at order (notifications.ids), `reports_status` computed as
ENQUEUE computes it (false: the bench client has no webhook endpoint, and the status-event
triggers of migration notifications 0004 pass over such rows, as they would at intake), and
the other triggers firing as usual.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from .database import Server

HISTORY_CHANNEL = "fake"
HISTORY_SUBJECT = "History"  # tells the history apart from the measured rows, for a person looking
RECIPIENTS = 100_000  # distinct recipients: a listing by recipient finds ~10 each in 1,000,000

# One statement: the notifications, then their two events each. The CTE's RETURNING feeds the
# events, so nothing is read back. generate_series yields i in order, and each step keeps that
# order (no sort: one of 1,000,000 wide rows would spill to disk), so the heap and the
# identity column are in time order, as rows written one day after another would be.
FILL = """
WITH spread AS (
    SELECT i, statement_timestamp() - interval '20 days' + (i - 1) * (interval '19 days' / %(rows)s) AS created,
           replace(gen_random_uuid()::text, '-', '') AS hex  -- volatile: one per row
    FROM generate_series(1, %(rows)s) AS i
), new_notification AS (
    INSERT INTO notification (id, client_id, channel, recipient, subject, message, metadata, status, attempts,
                              last_error, provider_message_id, created_at, updated_at, sent_at, priority,
                              send_at, expires_at, reports_status, html, template, template_version, locale)
    SELECT
        -- A UUIDv7 as notifications.ids makes them: 48 bits of Unix milliseconds, version 7,
        -- then random bits with the RFC 9562 variant (8).
        (lpad(to_hex(floor(extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
         || substr(hex, 1, 3) || '8' || substr(hex, 4, 15))::uuid,
        %(client_id)s, %(channel)s, 'user' || (i %% %(recipients)s) || '@example.com', %(subject)s,
        'history message ' || i, '{}'::jsonb, 'sent', 1, '', 'fake-' || hex,
        created, created + interval '40 ms', created + interval '40 ms', 1, NULL, NULL,
        EXISTS (SELECT 1 FROM webhook_endpoint WHERE client_id = %(client_id)s), '', '', NULL, ''
    FROM spread
    RETURNING id, created_at, sent_at, provider_message_id
)
INSERT INTO notification_event (notification_id, status, attempt, error, provider_message_id, dispatcher,
                                note, created_at)
SELECT n.id, e.status, e.attempt, '', e.provider_message_id, e.dispatcher, '', e.at
FROM new_notification n
CROSS JOIN LATERAL (VALUES ('queued', 0, '', '', n.created_at),
                           ('sent', 1, n.provider_message_id, 'bench-history', n.sent_at))
     AS e(status, attempt, provider_message_id, dispatcher, at)
"""

# The indexes of the history's tables that no constraint owns (pg_get_indexdef gives the
# CREATE INDEX statement of each, its name schema-qualified).
SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid IN ('notification'::regclass, 'notification_event'::regclass)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""

# The triggers that check notification_event's foreign key to notification on insert.
FK_CHECK_TRIGGERS = """
SELECT t.tgname FROM pg_trigger t JOIN pg_constraint c ON c.oid = t.tgconstraint
WHERE t.tgrelid = 'notification_event'::regclass AND c.contype = 'f' AND c.confrelid = 'notification'::regclass
"""


def _superuser(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]


def fill(server: Server, dbname: str, *, rows: int, client_id: int) -> dict[str, float]:
    """Write `rows` finished notifications of `client_id` and their 2 * rows events, then
    VACUUM (ANALYZE) and CHECKPOINT, so that the measurement after it starts from settled
    tables (visibility map set, statistics current, no dirty pages to write). Returns the
    seconds each step took, for the details."""
    with server.connect(dbname) as conn:
        if conn.execute("SELECT EXISTS (SELECT 1 FROM webhook_endpoint WHERE client_id = %s)",
                        (client_id,)).fetchone()[0]:
            # With an endpoint, every row would also write a status event and a webhook: another measurement.
            raise RuntimeError("the history's client has a webhook endpoint")
        started = time.monotonic()
        with conn.transaction():
            # The secondary indexes are built after the rows rather than grown row by row: the
            # same indexes (their definitions read from the catalog, so they follow the
            # migrations) at a fraction of the time and the WAL (13 WAL records a
            # notification otherwise). The primary keys stay: the foreign keys need them.
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            indexes = conn.execute(SECONDARY_INDEXES).fetchall()
            for name, _ in indexes:
                conn.execute(f"DROP INDEX {name}")
            # The events' foreign-key check (a locking read of the notification per event: 12 s
            # of 2,000,000) is switched off for this transaction where we may (a superuser: our
            # embedded server): each event's notification_id comes from the RETURNING of the
            # same statement. Only that constraint's triggers: any other trigger still fires.
            checks = conn.execute(FK_CHECK_TRIGGERS).fetchall() if _superuser(conn) else []
            for (trigger,) in checks:
                conn.execute(sql.SQL("ALTER TABLE notification_event DISABLE TRIGGER {}").format(sql.Identifier(trigger)))
            conn.execute(FILL, {"rows": rows, "client_id": client_id, "channel": HISTORY_CHANNEL,
                                "subject": HISTORY_SUBJECT, "recipients": RECIPIENTS})
            # The deferred foreign-key checks run now (a table with pending ones cannot be indexed).
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for _, definition in indexes:
                conn.execute(definition)
            for (trigger,) in checks:
                conn.execute(sql.SQL("ALTER TABLE notification_event ENABLE TRIGGER {}").format(sql.Identifier(trigger)))
        inserted = time.monotonic()
        conn.execute("VACUUM (ANALYZE) notification, notification_event, outbox")
        vacuumed = time.monotonic()
    server.checkpoint(dbname)
    return {"insert_seconds": inserted - started, "vacuum_seconds": vacuumed - inserted,
            "checkpoint_seconds": time.monotonic() - vacuumed}


def empty(server: Server, dbname: str) -> None:
    """Empty the tables a notification writes (outbox, notification, notification_event and
    status_event), for the legs measured on empty tables; clients and keys stay."""
    with server.connect(dbname) as conn:
        # notification first, as the intake's ENQUEUE locks it: a POST that wrk left in flight
        # then finishes before the TRUNCATE, instead of deadlocking with it.
        conn.execute("TRUNCATE notification, notification_event, outbox, status_event")
        conn.execute("VACUUM (ANALYZE) notification, notification_event, outbox")
    server.checkpoint(dbname)


def counts(server: Server, dbname: str) -> dict[str, int]:
    """Rows in notification and notification_event now (exact counts, for the details)."""
    with server.connect(dbname) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("notification", "notification_event")}
