"""Every statement on the delivery path, in one place. outbox/store.py runs them.

Tables: notification and notification_event (notifications.models), outbox (outbox.models).
Each statement is a single round trip; data-modifying CTEs make each one atomic by itself.
Rows are passed as parallel arrays and expanded with unnest(), so a batch of any size costs
one statement, not one per row.

Time is the database's statement_timestamp(), never a dispatcher host's clock. (It equals now()
for these single-statement transactions, and it is what Django's Now() and our column
defaults use, so it stays consistent inside a longer transaction too.)

Lock order is always outbox row, then notification row, in the claim and in the completions,
so they cannot deadlock each other.
"""

# Intake: the notifications, their first history event ('queued') and their outbox rows,
# written together; nothing is sent here. The outbox row is due at once.
# `wake` sends at most one NOTIFY for the whole statement, and only when the caller's
# debounce allows it (see store.enqueue); the notification reaches listeners at commit.
ENQUEUE = """
WITH input AS (
    SELECT *
    FROM unnest(%(ids)s::uuid[], %(channels)s::text[], %(recipients)s::text[],
                %(subjects)s::text[], %(messages)s::text[], %(metadata)s::jsonb[])
         AS t(id, channel, recipient, subject, message, metadata)
), new_notification AS (
    INSERT INTO notification (id, channel, recipient, subject, message, metadata,
                              status, attempts, last_error, provider_message_id)
    SELECT id, channel, recipient, subject, message, metadata, 'queued', 0, '', ''
    FROM input
    RETURNING id, channel, created_at
), queued_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, created_at)
    SELECT id, 'queued', 0, '', '', '', created_at FROM new_notification
), new_outbox AS (
    INSERT INTO outbox (notification_id, channel, run_at, attempts)
    SELECT id, channel, created_at, 0 FROM new_notification
)
SELECT id, created_at,
       (SELECT pg_notify('outbox', '') WHERE %(notify)s) AS wake
FROM new_notification
"""

# Claim: lease up to %(limit)s due rows to one dispatcher, and mark their notifications
# 'sending', in one short transaction.
# - Index: outbox_claim_idx (run_at, id) serves `run_at <= statement_timestamp() ORDER BY run_at, id LIMIT n`
#   as an ordered range scan that stops after n rows. run_at is the lease's end while a row is
#   leased, so expired leases (crashed dispatchers) are simply due again.
# - FOR UPDATE SKIP LOCKED: concurrent claimers skip each other's rows instead of waiting;
#   each row goes to exactly one of them.
# - lease_token fences the outcome (see FINISH and RETRY): only this claim may record it.
# A row whose previous lease expired without an outcome (the holder crashed or stalled) gets
# a history event saying so, so the history shows why the notification is tried again.
CLAIM = """
WITH due AS (
    SELECT id, locked_by AS expired_holder
    FROM outbox
    WHERE run_at <= statement_timestamp()
      AND (%(channels)s::text[] IS NULL OR channel = ANY(%(channels)s::text[]))
    ORDER BY run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE outbox o
    SET attempts = o.attempts + 1,
        locked_by = %(dispatcher)s,
        lease_token = %(lease_token)s,
        run_at = statement_timestamp() + make_interval(secs => %(lease_seconds)s)
    FROM due
    WHERE o.id = due.id
    RETURNING o.id, o.notification_id, o.attempts, due.expired_holder
), sending AS (
    UPDATE notification n
    SET status = 'sending', attempts = leased.attempts, updated_at = statement_timestamp()
    FROM leased
    WHERE n.id = leased.notification_id
    RETURNING leased.id AS outbox_id, n.id, n.channel, n.recipient, n.subject, n.message,
              n.metadata, leased.attempts, leased.expired_holder
), lease_expired_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, created_at)
    SELECT id, 'retrying', attempts - 1,
           'lease expired before dispatcher ' || expired_holder || ' recorded an outcome',
           '', expired_holder, statement_timestamp()
    FROM sending
    WHERE expired_holder IS NOT NULL
)
SELECT outbox_id, id, channel, recipient, subject, message, metadata, attempts
FROM sending
"""

# Final outcomes ('sent' or 'failed'), one row each: the outbox row goes, the notification
# takes its final status, the attempt lands in the history.
# Fencing: a row is finished only if it still carries the lease_token of the claim that sent
# it. A dispatcher whose lease expired and was re-claimed by another (it stalled or lost its
# connection) matches nothing here, and its stale outcome is dropped.
FINISH = """
WITH outcome AS (
    SELECT *
    FROM unnest(%(outbox_ids)s::bigint[], %(lease_tokens)s::uuid[], %(statuses)s::text[],
                %(errors)s::text[], %(provider_message_ids)s::text[])
         AS t(outbox_id, lease_token, status, error, provider_message_id)
), finished AS (
    DELETE FROM outbox o
    USING outcome
    WHERE o.id = outcome.outbox_id AND o.lease_token = outcome.lease_token
    RETURNING o.notification_id, o.attempts, outcome.status, outcome.error,
              outcome.provider_message_id
), updated AS (
    UPDATE notification n
    SET status = f.status, updated_at = statement_timestamp(), last_error = f.error,
        provider_message_id = f.provider_message_id,
        sent_at = CASE WHEN f.status = 'sent' THEN statement_timestamp() ELSE n.sent_at END
    FROM finished f
    WHERE n.id = f.notification_id
)
INSERT INTO notification_event (notification_id, status, attempt, error,
                                provider_message_id, dispatcher, created_at)
SELECT notification_id, status, attempts, error, provider_message_id, %(dispatcher)s, statement_timestamp()
FROM finished
"""

# Transient failures: release the lease and make the row due again after its backoff delay
# (computed by outbox.retry.RetryPolicy); the notification shows 'retrying' with the error and
# the time of the next attempt. Fenced on lease_token like FINISH.
RETRY = """
WITH outcome AS (
    SELECT *
    FROM unnest(%(outbox_ids)s::bigint[], %(lease_tokens)s::uuid[], %(errors)s::text[],
                %(delays)s::float8[])
         AS t(outbox_id, lease_token, error, delay_seconds)
), released AS (
    UPDATE outbox o
    SET run_at = statement_timestamp() + make_interval(secs => outcome.delay_seconds),
        locked_by = NULL, lease_token = NULL
    FROM outcome
    WHERE o.id = outcome.outbox_id AND o.lease_token = outcome.lease_token
    RETURNING o.notification_id, o.attempts, o.run_at, outcome.error
), updated AS (
    UPDATE notification n
    SET status = 'retrying', updated_at = statement_timestamp(), last_error = r.error
    FROM released r
    WHERE n.id = r.notification_id
)
INSERT INTO notification_event (notification_id, status, attempt, error,
                                provider_message_id, dispatcher, next_attempt_at, created_at)
SELECT notification_id, 'retrying', attempts, error, '', %(dispatcher)s, run_at, statement_timestamp()
FROM released
"""
