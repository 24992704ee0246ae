"""Every statement that moves a notification through delivery, in one place.

outbox/store.py runs them. Tables: notification, notification_event, idempotency_key,
suppression and receipt (notifications.models), outbox, channel_state and recipient_budget
(outbox.models).

Each statement is one round trip; its data-modifying CTEs make it atomic by itself. Rows go
in as parallel arrays expanded with unnest(), so a batch of any size costs one statement.

Time is the database's statement_timestamp(), never a host's clock. (It equals now() in
these single-statement transactions, and it is what Django's Now() and the column defaults
use, so it stays consistent inside a longer transaction too.)

Lock order is always outbox row, then notification row, so no two of these statements can
deadlock each other.

A row's life: ENQUEUE (due at once, or at send_at) -> CLAIM (leased to one dispatcher) ->
START (the send begins; a CANCEL before this wins; done by CLAIM itself for the rows that
the dispatcher sends at once) -> RECORD (sent/failed: row deleted; retrying: released until
its backoff ends). After the send, the provider's receipts
(RECORD_RECEIPTS, APPLY_RECEIPTS) may make a sent notification delivered or undelivered.

Every status change of a notification of a client with a webhook endpoint also writes a
status event, by the triggers of notifications/migrations/0004_receipts_suppressions_status_events.py,
in the same transaction as the statement here that changed it.
"""

# Intake: the notifications, their first history event ('queued', or 'scheduled' when
# send_at is in the future) and their outbox rows, written together; nothing is sent here.
# A notification whose recipient is on the client's suppression list for its channel's kind
# (its row's kind; index suppression_unique) is written 'suppressed', with no outbox row, unless
# its request said ignore_suppression.
# `wake` sends at most one NOTIFY for the whole statement, and only when the caller's
# debounce allows it (store.enqueue); listeners receive it at commit.
# A client with a webhook endpoint gets status events of the new notifications (reports_status),
# written by the trigger notification_accepted, and of their later status changes, by
# notification_status_changed (notifications/migrations/0004_receipts_suppressions_status_events.py).
_ENQUEUE_CTES = """
input AS (
    SELECT t.*, s.reason AS suppressed_for, s.notification_id AS suppressed_by, s.created_at AS suppressed_at
    -- One JSON array of the rows (one object each), not an array per column: the client
    -- encodes it with the C JSON encoder, 5x faster than adapting 15 arrays value by value
    -- (2.5 against 12.8 ms for 1,000 rows), and the server reads it as fast.
    FROM jsonb_to_recordset(%(rows)s::jsonb)
         AS t(id uuid, channel text, recipient text, subject text, message text, metadata jsonb,
              priority smallint, send_at timestamptz, expires_at timestamptz, kind text,
              ignore_suppression bool, html text, template text, template_version int, locale text)
    LEFT JOIN suppression s
           ON NOT t.ignore_suppression AND s.client_id = %(client_id)s AND s.kind = t.kind AND s.recipient = t.recipient
), new_notification AS (
    INSERT INTO notification (id, client_id, channel, recipient, subject, message, metadata,
                              status, attempts, last_error, provider_message_id,
                              priority, send_at, expires_at, reports_status, html, template, template_version, locale)
    SELECT id, %(client_id)s, channel, recipient, subject, message, metadata,
           CASE WHEN suppressed_for IS NOT NULL THEN 'suppressed'
                WHEN send_at > statement_timestamp() THEN 'scheduled' ELSE 'queued' END,
           0, CASE WHEN suppressed_for IS NOT NULL THEN 'recipient suppressed: ' || suppressed_for ELSE '' END,
           '', priority, send_at, expires_at,
           EXISTS (SELECT 1 FROM webhook_endpoint WHERE client_id = %(client_id)s),
           html, template, template_version, locale
    FROM input
    WHERE {admitted}
    RETURNING id, channel, recipient, status, priority, send_at, created_at, last_error
), first_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, note, created_at)
    SELECT n.id, n.status, 0, '', '', '',
           CASE WHEN n.status = 'suppressed'
                THEN 'not sent: ' || i.recipient || ' is on the suppression list for ' || i.kind || ' since '
                     || to_char(i.suppressed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"') || ': ' || i.suppressed_for
                     || coalesce(' (notification ' || i.suppressed_by || ')', '')
                ELSE '' END,
           n.created_at
    FROM new_notification n JOIN input i USING (id)
), new_outbox AS (
    INSERT INTO outbox (notification_id, channel, priority, run_at, attempts, sending, recipient)
    SELECT id, channel, priority, greatest(send_at, created_at), 0, false, recipient
    FROM new_notification
    WHERE status <> 'suppressed'
)
"""

ENQUEUE = "WITH " + _ENQUEUE_CTES.replace("{admitted}", "true") + """
SELECT id, status, created_at, last_error,
       (SELECT pg_notify('outbox', '') WHERE %(notify)s) AS wake
FROM new_notification
"""

# The fleet-wide rate limit per API client (notifications.throttling: NOTIFY_THROTTLE_RATE),
# one fixed window of %(rate_period)s seconds aligned to the epoch, in which the client may use
# %(rate_limit)s: a request costs %(rate_cost)s (1, or its number of notifications).
# - Table api_rate_counter (unlogged), primary key (client_id, shard): the client's window is
#   counted in NOTIFY_THROTTLE_SHARDS rows, and a request adds its cost to one of them,
#   %(rate_shard)s, picked at random by the caller. A row is reused from window to window: its
#   `used` starts again from 0 when window_start (or the rate's period) has moved on.
# - The check: the other shards' sum as of the statement's snapshot (rate_others, by the
#   primary key) plus this shard as it is once locked, plus the cost, must stay within the
#   limit. ON CONFLICT DO UPDATE locks the shard's row and evaluates its WHERE on the newest
#   committed version (after waiting for a concurrent request holding it), so with one shard
#   the limit is exact. With several, a request does not see the other shards' uncommitted
#   increments: the fleet may exceed the limit by the cost of the requests in flight on other
#   shards at that moment, never more.
# - Refused (over the limit): the INSERT and its update write nothing, and `rate_taken` is
#   empty. The row lock, when taken, lasts until the request's transaction commits: requests
#   of one client on one shard commit one after another (hence the shards).
_RATE_CTES = """
rate_window AS (
    SELECT to_timestamp(floor(extract(epoch FROM statement_timestamp()) / %(rate_period)s::int)
                        * %(rate_period)s::int) AS starts
), rate_others AS (
    SELECT coalesce(sum(c.used), 0) AS used
    FROM api_rate_counter c, rate_window w
    WHERE c.client_id = %(client_id)s AND c.shard <> %(rate_shard)s::smallint
      AND c.window_start = w.starts AND c.period = %(rate_period)s::int
), rate_taken AS (
    INSERT INTO api_rate_counter AS c (client_id, shard, window_start, period, used)
    SELECT %(client_id)s, %(rate_shard)s::smallint, w.starts, %(rate_period)s::int, %(rate_cost)s::int
    FROM rate_window w, rate_others o
    WHERE o.used + %(rate_cost)s::int <= %(rate_limit)s::int
    ON CONFLICT (client_id, shard) DO UPDATE
        SET used = CASE WHEN c.window_start = EXCLUDED.window_start AND c.period = EXCLUDED.period
                        THEN c.used ELSE 0 END + EXCLUDED.used,
            window_start = EXCLUDED.window_start, period = EXCLUDED.period
        WHERE CASE WHEN c.window_start = EXCLUDED.window_start AND c.period = EXCLUDED.period
                   THEN c.used ELSE 0 END + EXCLUDED.used + (SELECT used FROM rate_others) <= %(rate_limit)s::int
    RETURNING 1
), rate_refused AS (
    -- One row when refused: the seconds to the window's end (the answer's Retry-After).
    SELECT greatest(1, ceil(extract(epoch FROM w.starts + make_interval(secs => %(rate_period)s::int)
                                               - statement_timestamp())))::int AS retry_after
    FROM rate_window w
    WHERE NOT EXISTS (SELECT 1 FROM rate_taken)
)"""

# Intake under the rate limit: ENQUEUE with the client's counter taken in the same statement,
# so that a steady-state POST stays one round trip. The notifications are written only if the
# counter took the request's cost (`new_notification` reads rate_taken, so the counter's CTE
# runs first and decides); refused, the statement writes nothing and returns one row whose id
# is NULL, with the Retry-After in `retry_after`.
# Lock order: the counter's row (RATE_TAKE's), then the new rows; TAKE_IDEMPOTENCY_KEY, when
# there is a key, comes before it in the same transaction (its key's row only).
ENQUEUE_COUNTED = "WITH " + _RATE_CTES + "," + _ENQUEUE_CTES.replace("{admitted}", "EXISTS (SELECT 1 FROM rate_taken)") + """
SELECT id, status, created_at, last_error,
       (SELECT pg_notify('outbox', '') WHERE %(notify)s) AS wake, NULL::int AS retry_after
FROM new_notification
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, retry_after FROM rate_refused
"""

# The rate limit for every other API request (notifications.throttling): one request's cost
# taken from the client's counter, alone; NULL if taken, else the Retry-After in seconds.
RATE_TAKE = "WITH " + _RATE_CTES + """
SELECT (SELECT retry_after FROM rate_refused)
"""


# Idempotency: take the client's Idempotency-Key for this request, in the transaction that
# enqueues its notifications. The unique index idempotency_key_unique decides between racing
# requests: the second one's INSERT waits for the first to commit, then conflicts and returns
# nothing, and the caller reads the first request's row (SELECT_IDEMPOTENCY_KEY). A key past
# its expires_at is free again.
TAKE_IDEMPOTENCY_KEY = """
INSERT INTO idempotency_key AS k (client_id, key, request_hash, notification_ids,
                                  created_at, expires_at)
VALUES (%(client_id)s, %(key)s, %(request_hash)s, %(notification_ids)s::uuid[],
        statement_timestamp(), statement_timestamp() + make_interval(secs => %(ttl_seconds)s))
ON CONFLICT (client_id, key) DO UPDATE
    SET request_hash = EXCLUDED.request_hash, notification_ids = EXCLUDED.notification_ids,
        created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
    WHERE k.expires_at <= statement_timestamp()
RETURNING id
"""

SELECT_IDEMPOTENCY_KEY = """
SELECT request_hash, notification_ids FROM idempotency_key
WHERE client_id = %(client_id)s AND key = %(key)s
"""

# Claim: lease up to %(limit)s due rows to one dispatcher, highest priority first, per channel
# no more than its %(channel_limits)s (what the dispatcher can start of it soon), and no more
# than the fleet's policy allows the channel right now (channels.policy):
# - The state of each channel with a policy (%(policy_channels)s; table channel_state) is read
#   and locked first (`FOR UPDATE OF s`): claims for that channel, from every dispatcher on
#   every host, take their share one after another. (With recipient budgets, the claim's
#   transaction takes the lock before this statement: LOCK_CHANNEL_STATES.) Lock order: channel_state, then outbox
#   rows, then notification rows; the recorder's CHANNEL_OUTCOMES takes channel_state alone.
# - Its rate budget is a token bucket refilled from the database's clock: it allows
#   floor(tokens) rows, and is charged for the rows leased (`charge`). While a provider's
#   Retry-After pause runs (paused_until), it allows none.
# - Its circuit breaker: open, nothing until breaker_until; then one row, the probe, and the
#   breaker is half_open until the probe's outcome (or, if that never comes, the lease's end).
# - Index outbox_claim_idx (channel, priority, run_at, id): for each (priority, channel) pair,
#   in the order the caller gives (priorities in order; channels shuffled per claim, so that
#   none is starved), an ordered range scan of `run_at <= now` limited to the channel's room.
#   run_at is the lease's end while a row is leased, so expired leases of crashed
#   dispatchers are simply due again. A backlog on one channel is never read by a claim for
#   another. The candidates of all pairs are then cut to each channel's room across its
#   priorities (`nth`) and to %(limit)s.
# - FOR UPDATE SKIP LOCKED: concurrent claimers skip each other's rows instead of waiting;
#   each row goes to exactly one of them (a candidate left out by the cut is locked until
#   the statement commits, no longer).
# - lease_token fences everything the holder does next (START, RECORD).
# - The first %(start_limits)s rows of each channel of %(start_channels)s are also started:
#   what START does (the row sending, its attempt counted, the notification 'sending') done
#   by the claim for the rows the dispatcher's send threads take at once, so that a delivery
#   costs one statement and one outbox row version less. The rest are leased unstarted, and
#   a cancel still wins over them until their START.
# A row whose previous holder had started its send and then lost the lease (it crashed,
# stalled or lost the database) goes back to 'retrying' with an event saying so: the outcome
# of that attempt is unknown, and at-least-once means sending again. Such attempts count like
# any other: once %(max_attempts)s have been started, the row is not leased again but
# finished as 'failed' (like a queue's redrive limit), with the reason in its history.
CLAIM = """
WITH policy AS (
    SELECT * FROM unnest(%(policy_channels)s::text[], %(policy_rates)s::float8[], %(policy_bursts)s::float8[],
                         %(policy_recipient_rates)s::float8[], %(policy_recipient_bursts)s::float8[],
                         %(policy_breakers)s::bool[])
                  AS p(channel, rate, burst, recipient_rate, recipient_burst, has_breaker)
), state AS (
    SELECT s.channel, s.breaker, s.breaker_until, s.paused_until, p.rate, p.recipient_rate, p.recipient_burst,
           -- With a breaker, the fleet keeps at most `successes` (at least one) sends of the
           -- channel in flight: the leased rows are counted (index outbox_claim_idx, the
           -- channel's rows after now: its leases, and its scheduled rows, passed over).
           CASE WHEN p.has_breaker THEN greatest(1, s.successes) - (
               SELECT count(*) FROM outbox o
               WHERE o.channel = s.channel AND o.run_at > statement_timestamp() AND o.locked_by IS NOT NULL)
           END AS window_left,
           least(p.burst, s.tokens + p.rate * extract(epoch FROM statement_timestamp() - s.refilled_at)) AS tokens,
           s.breaker <> 'closed' AND s.breaker_until <= statement_timestamp() AS probe
    FROM channel_state s JOIN policy p USING (channel)
    ORDER BY s.channel  -- every claimer locks in the same order: no deadlock between claims
    FOR UPDATE OF s
), allowance AS (
    SELECT channel, recipient_rate, recipient_burst,
           CASE WHEN paused_until > statement_timestamp() THEN 0
                WHEN breaker <> 'closed' AND NOT probe THEN 0
                WHEN probe THEN CASE WHEN rate IS NULL OR tokens >= 1 THEN 1 ELSE 0 END
                -- least() passes over a NULL (no breaker, or no budget; both: no limit); the
                -- CASEs keep greatest() from reading a NULL as 0
                ELSE least(CASE WHEN window_left IS NOT NULL THEN greatest(window_left, 0) END,
                           CASE WHEN rate IS NOT NULL THEN floor(greatest(tokens, 0)) END) END::int AS allowed
    FROM state
), pair AS (
    SELECT p.priority, p.channel, p.ord, a.recipient_rate, a.recipient_burst,
           least(p.room, coalesce(a.allowed, p.room)) AS room,
           coalesce(a.allowed, %(limit)s) AS channel_room
    FROM unnest(%(priorities)s::smallint[], %(channels)s::text[], %(channel_limits)s::int[])
         WITH ORDINALITY AS p(priority, channel, room, ord)
    LEFT JOIN allowance a USING (channel)
), candidate AS (
    SELECT o.id, o.notification_id, o.attempts, o.locked_by AS expired_holder, o.sending AS was_sending,
           o.sending AND o.attempts >= %(max_attempts)s AS exhausted, pair.channel, pair.ord, o.run_at,
           o.recipient, pair.channel_room, pair.recipient_rate,
           row_number() OVER (PARTITION BY pair.channel ORDER BY pair.ord, o.run_at, o.id) AS nth,
           row_number() OVER (PARTITION BY pair.channel, o.recipient ORDER BY pair.ord, o.run_at, o.id) AS nth_for_recipient
    FROM pair
    CROSS JOIN LATERAL (
        SELECT id, notification_id, attempts, locked_by, sending, run_at, recipient
        FROM outbox
        WHERE channel = pair.channel
          AND priority = pair.priority
          AND run_at <= statement_timestamp()
          -- A recipient whose budget is spent is passed over (recipient_budget's unique
          -- index), so that its burst does not hold up the others.
          AND (pair.recipient_rate IS NULL OR NOT EXISTS (
                SELECT 1 FROM recipient_budget rb
                WHERE rb.channel = pair.channel AND rb.recipient = outbox.recipient
                  AND least(pair.recipient_burst, rb.tokens + pair.recipient_rate
                            * extract(epoch FROM statement_timestamp() - rb.refilled_at)) < 1))
        ORDER BY run_at, id
        LIMIT pair.room
        FOR UPDATE SKIP LOCKED
    ) AS o
    WHERE pair.room > 0
), due AS (
    -- One row per recipient and claim where a recipient budget applies.
    SELECT * FROM candidate
    WHERE nth <= channel_room AND (recipient_rate IS NULL OR nth_for_recipient = 1)
    ORDER BY ord, run_at, id
    LIMIT %(limit)s
), chosen AS (
    -- The first %(start_limits)s rows of each channel are started by the claim itself (what
    -- the dispatcher's send threads take at once: one statement instead of a CLAIM and a
    -- START); the others are leased unstarted, and START marks them when threads come free.
    -- A row past its expires_at is never started here: START expires it.
    SELECT due.*,
           NOT due.exhausted AND (n.expires_at IS NULL OR n.expires_at > statement_timestamp())
           AND row_number() OVER (PARTITION BY due.channel ORDER BY due.ord, due.run_at, due.id)
               <= coalesce(sl.start_limit, 0) AS start_now,
           n.recipient AS to_recipient, n.subject, n.message, n.metadata, n.expires_at, n.html
    FROM due
    JOIN notification n ON n.id = due.notification_id
    LEFT JOIN unnest(%(start_channels)s::text[], %(start_limits)s::int[]) AS sl(channel, start_limit)
           ON sl.channel = due.channel
), leased AS (
    UPDATE outbox o
    SET locked_by = %(dispatcher)s,
        lease_token = %(lease_token)s,
        sending = chosen.start_now,
        attempts = o.attempts + chosen.start_now::int,
        run_at = statement_timestamp() + make_interval(secs => %(lease_seconds)s)
    FROM chosen
    WHERE o.id = chosen.id AND NOT chosen.exhausted
    RETURNING o.id, o.notification_id, chosen.attempts AS attempts_before, o.channel, o.origin, o.moved_at_attempt,
              chosen.expired_holder, chosen.was_sending, chosen.start_now AS started
), marked AS (
    -- One update per notification: 'sending' for a row started here; 'retrying' for a row
    -- whose previous holder had started its send and lost the lease (outcome unknown), and
    -- is not started again by this claim.
    UPDATE notification n
    SET status = CASE WHEN leased.started THEN 'sending' ELSE 'retrying' END,
        attempts = CASE WHEN leased.started THEN leased.attempts_before + 1 ELSE n.attempts END,
        last_error = CASE WHEN leased.was_sending THEN 'lease expired during the send; outcome unknown'
                          ELSE n.last_error END,
        updated_at = statement_timestamp()
    FROM leased
    WHERE n.id = leased.notification_id AND (leased.was_sending OR leased.started)
), lost_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, note, created_at)
    SELECT notification_id, 'retrying', attempts_before, 'lease expired during the send; outcome unknown', '',
           expired_holder, 'dispatcher ' || expired_holder || ' did not record an outcome in time',
           statement_timestamp()
    FROM leased
    WHERE was_sending
), given_up AS (
    DELETE FROM outbox o
    USING chosen
    WHERE o.id = chosen.id AND chosen.exhausted
    RETURNING o.notification_id, o.attempts, chosen.expired_holder
), failed AS (
    UPDATE notification n
    SET status = 'failed', updated_at = statement_timestamp(),
        last_error = CASE
            WHEN n.last_error IN ('', 'lease expired during the send; outcome unknown')
            THEN 'outcome unknown after ' || g.attempts || ' attempts whose leases lapsed'
            ELSE 'gave up after ' || g.attempts || ' attempts: the lease of the last one lapsed during '
                 || 'the send (outcome unknown); the error before: ' || n.last_error
        END
    FROM given_up g
    WHERE n.id = g.notification_id
    RETURNING n.id, g.attempts, g.expired_holder, n.last_error
), failed_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, note, created_at)
    SELECT id, 'failed', attempts, last_error, '', expired_holder,
           'dispatcher ' || expired_holder || ' did not record an outcome in time; '
           || 'no attempts left (OUTBOX_MAX_ATTEMPTS)',
           statement_timestamp()
    FROM failed
)
, recipients_leased AS (
    SELECT due.channel, due.recipient, st.recipient_rate, st.recipient_burst
    FROM due JOIN leased ON leased.id = due.id JOIN state st ON st.channel = due.channel
    WHERE st.recipient_rate IS NOT NULL AND due.recipient IS NOT NULL
), recipient_charged AS (
    -- Each recipient's bucket pays for its row (the channel's row lock, taken above, keeps
    -- claims of the same channel from racing on it).
    UPDATE recipient_budget rb
    SET tokens = least(r.recipient_burst, rb.tokens + r.recipient_rate
                       * extract(epoch FROM statement_timestamp() - rb.refilled_at)) - 1,
        refilled_at = statement_timestamp()
    FROM recipients_leased r
    WHERE rb.channel = r.channel AND rb.recipient = r.recipient
    RETURNING rb.channel, rb.recipient
), recipient_new AS (
    INSERT INTO recipient_budget (channel, recipient, tokens, refilled_at)
    SELECT r.channel, r.recipient, r.recipient_burst - 1, statement_timestamp()
    FROM recipients_leased r
    WHERE NOT EXISTS (SELECT 1 FROM recipient_budget rb WHERE rb.channel = r.channel AND rb.recipient = r.recipient)
    ON CONFLICT (channel, recipient) DO NOTHING
), charge AS (
    -- The rows leased are taken from the budget; a probe makes the breaker half_open.
    UPDATE channel_state s
    SET tokens = CASE WHEN st.rate IS NULL THEN s.tokens ELSE st.tokens - coalesce(taken.n, 0) END,
        refilled_at = statement_timestamp(),
        breaker = CASE WHEN st.probe AND taken.n > 0 THEN 'half_open' ELSE s.breaker END,
        breaker_until = CASE WHEN st.probe AND taken.n > 0
                             THEN statement_timestamp() + make_interval(secs => %(lease_seconds)s)
                             ELSE s.breaker_until END,
        changed_at = CASE WHEN st.probe AND taken.n > 0 THEN statement_timestamp() ELSE s.changed_at END
    FROM state st
    LEFT JOIN (SELECT channel, count(*) AS n FROM leased GROUP BY channel) AS taken USING (channel)
    WHERE s.channel = st.channel
    RETURNING s.channel, st.probe AND taken.n > 0 AS probing
)
SELECT leased.id AS outbox_id, leased.notification_id, leased.channel, chosen.to_recipient, chosen.subject,
       chosen.message, chosen.metadata, leased.attempts_before + 1 AS attempt, chosen.expires_at,
       coalesce((SELECT probing FROM charge WHERE charge.channel = leased.channel), false) AS probe,
       leased.origin, leased.moved_at_attempt, chosen.html, leased.started
FROM leased JOIN chosen ON chosen.id = leased.id
"""

# Start: the holder is about to send these rows. Each is marked sending (from now on a
# cancel answers 409) and its attempt is counted; the notification shows 'sending'. A row
# that is gone (cancelled) or re-leased (lost lease) is not returned, and is not sent. A row
# past its notification's expires_at is expired instead of sent.
# Concurrency with CANCEL: both take the outbox row's lock; whichever commits first wins,
# and the other re-checks the row (gone, or sending) after waiting.
START = """
WITH input AS (
    SELECT * FROM unnest(%(outbox_ids)s::bigint[], %(lease_tokens)s::uuid[])
                  AS t(outbox_id, lease_token)
), held AS (
    SELECT o.id, o.notification_id, input.lease_token, o.sending AS already_started,
           n.expires_at IS NOT NULL AND n.expires_at <= statement_timestamp() AS expired
    FROM input
    JOIN outbox o ON o.id = input.outbox_id AND o.lease_token = input.lease_token
    JOIN notification n ON n.id = o.notification_id
), started AS (
    -- The lease_token test is re-checked on the current row version after waiting for a
    -- concurrent CANCEL or CLAIM, so a row deleted or re-leased meanwhile is skipped.
    UPDATE outbox o
    SET sending = true, attempts = o.attempts + 1
    FROM held
    WHERE o.id = held.id AND o.lease_token = held.lease_token AND NOT held.expired
      AND NOT o.sending
    RETURNING o.id, o.notification_id, o.attempts
), expired AS (
    DELETE FROM outbox o
    USING held
    WHERE o.id = held.id AND o.lease_token = held.lease_token AND held.expired
      AND NOT o.sending
    RETURNING o.notification_id
), mark_sending AS (
    UPDATE notification n
    SET status = 'sending', attempts = started.attempts, updated_at = statement_timestamp()
    FROM started
    WHERE n.id = started.notification_id
), mark_expired AS (
    UPDATE notification n
    SET status = 'expired', updated_at = statement_timestamp()
    FROM expired
    WHERE n.id = expired.notification_id
), expired_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, note, created_at)
    SELECT notification_id, 'expired', 0, '', '', %(dispatcher)s,
           'expires_at passed before it could be sent', statement_timestamp()
    FROM expired
)
-- A repeated START (its first answer was lost with the connection) finds its rows already
-- sending under its own lease: they are returned again, without counting another attempt.
SELECT id FROM started
UNION ALL
SELECT id FROM held WHERE already_started
"""

# Outcomes of sends, one row each, the whole batch in one statement:
# - final ('sent' or 'failed'): the outbox row goes, the notification takes its final status.
#   A failure with a %(suppress_reasons)s (channels.errors.RecipientRefusedError: an opt-out, a
#   channel gone) adds the recipient to the client's suppression list for the channel's %(kinds)s;
# - transient ('retrying'): the lease is released and the row is due again after its backoff
#   (%(delays)s, from outbox.retry.RetryPolicy); the notification shows 'retrying' with the
#   error and the time of the next attempt. A row given a %(move_tos)s channel fails over
#   (channels.policy fallback): it moves to that channel, due at once, remembering its origin;
#   the notification's channel follows, and its history says so;
# and every attempt lands in the history.
# Fencing: a row is recorded only if it still carries the lease_token of the claim that sent
# it. A dispatcher whose lease expired and was re-claimed by another (it stalled or lost its
# connection) matches nothing here, and its stale outcome is dropped.
# Lock order: outbox rows, then notification rows (one update each, whichever the outcome).
RECORD = """
WITH outcome AS (
    SELECT *
    FROM unnest(%(outbox_ids)s::bigint[], %(lease_tokens)s::uuid[], %(statuses)s::text[],
                %(errors)s::text[], %(provider_message_ids)s::text[], %(kinds)s::text[],
                %(suppress_reasons)s::text[], %(delays)s::float8[], %(move_tos)s::text[])
         AS t(outbox_id, lease_token, status, error, provider_message_id, kind, suppress_reason,
              delay_seconds, move_to)
), finished AS (
    DELETE FROM outbox o
    USING outcome
    WHERE o.id = outcome.outbox_id AND o.lease_token = outcome.lease_token AND outcome.status <> 'retrying'
    RETURNING o.notification_id, o.attempts, outcome.status, outcome.error, outcome.provider_message_id,
              outcome.kind, outcome.suppress_reason, NULL::timestamptz AS next_attempt_at, NULL::text AS move_to
), released AS (
    UPDATE outbox o
    SET run_at = statement_timestamp() + make_interval(secs => outcome.delay_seconds),
        locked_by = NULL, lease_token = NULL, sending = false,
        channel = coalesce(outcome.move_to, o.channel),
        origin = CASE WHEN outcome.move_to IS NULL THEN o.origin ELSE coalesce(o.origin, o.channel) END,
        moved_at_attempt = CASE WHEN outcome.move_to IS NULL THEN o.moved_at_attempt ELSE o.attempts END
    FROM outcome
    WHERE o.id = outcome.outbox_id AND o.lease_token = outcome.lease_token AND outcome.status = 'retrying'
    RETURNING o.notification_id, o.attempts, 'retrying'::text, outcome.error, ''::text, outcome.kind, ''::text,
              o.run_at, outcome.move_to
), recorded AS (
    SELECT * FROM finished
    UNION ALL
    SELECT * FROM released
), updated AS (
    UPDATE notification n
    SET status = r.status, updated_at = statement_timestamp(), last_error = r.error,
        provider_message_id = CASE WHEN r.status = 'retrying' THEN n.provider_message_id ELSE r.provider_message_id END,
        sent_at = CASE WHEN r.status = 'sent' THEN statement_timestamp() ELSE n.sent_at END,
        channel = coalesce(r.move_to, n.channel)
    FROM recorded r
    WHERE n.id = r.notification_id
    RETURNING n.id, n.client_id, n.recipient, r.kind, r.suppress_reason
), suppressed AS (
    INSERT INTO suppression (client_id, kind, recipient, reason, notification_id, created_at)
    SELECT client_id, kind, recipient, suppress_reason, id, statement_timestamp()
    FROM updated
    WHERE suppress_reason <> ''
    ON CONFLICT (client_id, kind, recipient) DO NOTHING
)
INSERT INTO notification_event (notification_id, status, attempt, error, provider_message_id,
                                dispatcher, next_attempt_at, note, created_at)
SELECT notification_id, status, attempts, error, provider_message_id, %(dispatcher)s, next_attempt_at,
       CASE WHEN suppress_reason <> '' THEN 'recipient added to the suppression list'
            WHEN move_to IS NOT NULL THEN 'failed over to channel ' || move_to
            ELSE '' END,
       statement_timestamp()
FROM recorded
"""

# Failover from an open circuit breaker: due rows of the channels among %(channels)s whose
# breaker is open, not leased since their last attempt, move to the next channel of their
# origin's fallback list (%(routes)s: origin -> [fallbacks]) whose breaker is not open. Runs
# from each dispatcher's claim loop now and then; rows locked by a claim are skipped.
# Index outbox_claim_idx (channel, ...) finds an open channel's rows.
FAILOVER_FROM_OPEN = """
WITH open AS (
    SELECT channel FROM channel_state
    WHERE breaker <> 'closed' AND channel = ANY(%(channels)s::text[])
), moving AS (
    SELECT o.id, o.channel, coalesce(o.origin, o.channel) AS origin
    FROM outbox o
    WHERE o.channel IN (SELECT channel FROM open)
      AND o.run_at <= statement_timestamp() AND o.locked_by IS NULL
    ORDER BY o.run_at
    LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
), target AS (
    SELECT m.id, m.channel, m.origin,
           (SELECT hop.name
            FROM jsonb_array_elements_text(%(routes)s::jsonb -> m.origin) WITH ORDINALITY AS hop(name, position)
            WHERE hop.position > coalesce(
                      (SELECT here.position
                       FROM jsonb_array_elements_text(%(routes)s::jsonb -> m.origin) WITH ORDINALITY AS here(name, position)
                       WHERE here.name = m.channel), 0)
              AND hop.name NOT IN (SELECT channel FROM open)
            ORDER BY hop.position LIMIT 1) AS move_to
    FROM moving m
), moved AS (
    UPDATE outbox o
    SET channel = t.move_to, origin = t.origin, moved_at_attempt = o.attempts, run_at = statement_timestamp()
    FROM target t
    WHERE o.id = t.id AND t.move_to IS NOT NULL
    RETURNING o.notification_id, o.attempts, t.channel AS moved_from, t.move_to
), renamed AS (
    UPDATE notification n SET channel = m.move_to, updated_at = statement_timestamp()
    FROM moved m WHERE n.id = m.notification_id
    RETURNING n.id, n.status
), moved_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error, provider_message_id,
                                    dispatcher, note, created_at)
    SELECT m.notification_id, r.status, m.attempts, '', '', %(dispatcher)s,
           'failed over to channel ' || m.move_to || ': the circuit breaker of ' || m.moved_from || ' is open',
           statement_timestamp()
    FROM moved m JOIN renamed r ON r.id = m.notification_id
)
SELECT count(*) FROM moved
"""

# Release: a stopping dispatcher gives back rows it claimed but did not start, so that others
# take them at once rather than after the lease.
RELEASE = """
UPDATE outbox o
SET run_at = statement_timestamp(), locked_by = NULL, lease_token = NULL
FROM unnest(%(outbox_ids)s::bigint[], %(lease_tokens)s::uuid[]) AS t(outbox_id, lease_token)
WHERE o.id = t.outbox_id AND o.lease_token = t.lease_token AND NOT o.sending
"""

# Cancel one notification of a client, if its status is one of %(cancellable)s
# (notifications.models.Status.cancellable()) and its send has not started: its outbox row
# goes (even while a dispatcher holds the lease: START then finds nothing and does not send).
# Answers the notification's status before, and whether it was cancelled.
CANCEL = """
WITH target AS (
    SELECT id, status FROM notification
    WHERE id = %(notification_id)s AND client_id = %(client_id)s
), removed AS (
    DELETE FROM outbox o
    USING target
    WHERE o.notification_id = target.id AND NOT o.sending
      AND target.status = ANY(%(cancellable)s::text[])
    RETURNING o.notification_id, o.locked_by
), cancelled AS (
    UPDATE notification n
    SET status = 'cancelled', updated_at = statement_timestamp()
    FROM removed
    WHERE n.id = removed.notification_id
), cancelled_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, note, created_at)
    SELECT notification_id, 'cancelled', 0, '', '', coalesce(locked_by, ''),
           CASE WHEN locked_by IS NULL THEN %(note)s
                ELSE %(note)s || '; dispatcher ' || locked_by || ' held it but had not started the send'
           END,
           statement_timestamp()
    FROM removed
)
SELECT (SELECT status FROM target) AS status_before,
       EXISTS (SELECT 1 FROM removed) AS cancelled
"""

# Resend a notification of a client whose status is one of %(resendable)s
# (notifications.models.Status.resendable()): it is queued again with a new outbox row; the
# history keeps every earlier attempt. The row lock on the notification makes two concurrent
# resends queue it once.
RESEND = """
WITH target AS (
    SELECT id, status FROM notification
    WHERE id = %(notification_id)s AND client_id = %(client_id)s
    FOR UPDATE
), requeued AS (
    UPDATE notification n
    SET status = 'queued', updated_at = statement_timestamp(), last_error = '', attempts = 0
    FROM target
    WHERE n.id = target.id AND target.status = ANY(%(resendable)s::text[])
    RETURNING n.id, n.channel, n.priority, n.recipient
), new_outbox AS (
    INSERT INTO outbox (notification_id, channel, priority, run_at, attempts, sending, recipient)
    SELECT id, channel, priority, statement_timestamp(), 0, false, recipient FROM requeued
), queued_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error,
                                    provider_message_id, dispatcher, note, created_at)
    SELECT id, 'queued', 0, '', '', '', %(note)s, statement_timestamp() FROM requeued
)
SELECT (SELECT status FROM target) AS status_before,
       EXISTS (SELECT 1 FROM requeued) AS resent,
       (SELECT pg_notify('outbox', '') FROM requeued) AS wake
"""

# Heartbeat: a dispatcher process upserts its row of the `dispatcher` table (outbox.heartbeat).
# The time is the database's, so that "gone" compares like with like across hosts.
HEARTBEAT = """
INSERT INTO dispatcher AS d (id, host, pid, channels, started_at, last_heartbeat_at, stopped_at,
                             in_flight, sent, failed, retried, problem)
VALUES (%(id)s, %(host)s, %(pid)s, %(channels)s, %(started_at)s, now(),
        CASE WHEN %(stopped)s THEN now() END, %(in_flight)s, %(sent)s, %(failed)s, %(retried)s,
        %(problem)s)
ON CONFLICT (id) DO UPDATE
SET last_heartbeat_at = now(),
    stopped_at = EXCLUDED.stopped_at,
    in_flight = EXCLUDED.in_flight,
    sent = EXCLUDED.sent,
    failed = EXCLUDED.failed,
    retried = EXCLUDED.retried,
    problem = EXCLUDED.problem
"""

# Channel state: the row of each channel with a policy, created once (a dispatcher starts),
# its bucket full.
ENSURE_CHANNEL_STATE = """
INSERT INTO channel_state (channel, tokens, refilled_at, failures, breaker, changed_at)
SELECT channel, burst, statement_timestamp(), 0, 'closed', statement_timestamp()
FROM unnest(%(channels)s::text[], %(bursts)s::float8[]) AS t(channel, burst)
ON CONFLICT (channel) DO NOTHING
"""

# What a batch of outcomes says of each channel with a policy (outbox.recorder): whether a
# send got through (the provider answered: sent, or refused for good), how many transient
# failures followed the last one that did, and the longest Retry-After a provider asked for.
# - The breaker counts consecutive transient failures: at `threshold` a closed breaker opens
#   for `cool_down` seconds; the probe's outcome closes a half_open one, or opens it again; a
#   send that got through closes an open one (it was in flight when it opened).
# - A Retry-After pauses a channel with a rate budget until then (paused_until).
# - `successes` counts the sends that got through since the last transient failure: the
#   breaker's window of sends in flight (CLAIM), one after a failure, growing as they succeed.
# Takes channel_state rows alone (in channel order), so it cannot deadlock with CLAIM.
# Returns the breaker before and after, for the transitions' log and metrics.
CHANNEL_OUTCOMES = """
WITH input AS (
    SELECT * FROM unnest(%(channels)s::text[], %(got_through)s::bool[], %(trailing_failures)s::int[],
                         %(any_failure)s::bool[], %(trailing_successes)s::int[],
                         %(thresholds)s::int[], %(cool_downs)s::float8[], %(pauses)s::float8[])
         AS t(channel, got_through, trailing_failures, any_failure, trailing_successes, threshold, cool_down, pause)
), next AS (
    SELECT i.*, prev.breaker AS before,
           CASE WHEN i.got_through THEN i.trailing_failures ELSE prev.failures + i.trailing_failures END AS failures,
           CASE WHEN i.any_failure THEN i.trailing_successes ELSE prev.successes + i.trailing_successes END AS successes,
           CASE
               WHEN i.threshold IS NULL THEN prev.breaker
               WHEN prev.breaker <> 'closed'
                   THEN CASE WHEN i.got_through AND i.trailing_failures = 0 THEN 'closed' ELSE 'open' END
               WHEN (CASE WHEN i.got_through THEN i.trailing_failures ELSE prev.failures + i.trailing_failures END)
                    >= i.threshold
                   THEN 'open'
               ELSE 'closed'
           END AS breaker
    FROM input i JOIN channel_state prev USING (channel)
    ORDER BY i.channel
    FOR UPDATE OF prev
), updated AS (
    UPDATE channel_state s
    SET failures = next.failures,
        successes = next.successes,
        breaker = next.breaker,
        breaker_until = CASE WHEN next.breaker = 'open' AND next.before <> 'open'
                             THEN statement_timestamp() + make_interval(secs => next.cool_down)
                             ELSE s.breaker_until END,
        paused_until = CASE WHEN next.pause IS NULL THEN s.paused_until
                            ELSE greatest(coalesce(s.paused_until, statement_timestamp()),
                                          statement_timestamp() + make_interval(secs => next.pause)) END,
        changed_at = CASE WHEN next.breaker <> next.before THEN statement_timestamp() ELSE s.changed_at END
    FROM next
    WHERE s.channel = next.channel
    RETURNING s.channel, next.before, s.breaker AS after, s.failures
)
SELECT channel, before, after, failures FROM updated
"""

# Recipient budgets left alone for %(idle_seconds)s are full again: their rows go (a batch at
# a time, by a dispatcher now and then; index recipient_budget_refilled_idx).
PRUNE_RECIPIENT_BUDGETS = """
DELETE FROM recipient_budget
WHERE id IN (SELECT id FROM recipient_budget
             WHERE refilled_at < statement_timestamp() - make_interval(secs => %(idle_seconds)s)
             LIMIT 1000)
"""

# The lock CLAIM takes on channel_state rows, taken first by a statement of its own when a
# recipient budget is involved: a statement reads other tables as of its start, so CLAIM
# would read recipient_budget as it was before it waited for a claim of the same channel to
# commit. Taken here, in the claim's transaction, CLAIM starts after that commit and sees it.
LOCK_CHANNEL_STATES = """
SELECT channel FROM channel_state WHERE channel = ANY(%(channels)s::text[]) ORDER BY channel FOR UPDATE
"""

# Receipts (notifications.receipts): a provider's reports on messages it accepted, stored as
# they come. The same report twice (dedupe_key, a unique index) is stored once: the second
# changes nothing. Returns the ids of the new ones, for APPLY_RECEIPTS in the same transaction.
RECORD_RECEIPTS = """
INSERT INTO receipt (source, kind, provider_message_id, outcome, provider_status, error_code, detail,
                     suppress_reason, occurred_at, dedupe_key, received_at)
SELECT *, statement_timestamp()
FROM unnest(%(sources)s::text[], %(kinds)s::text[], %(provider_message_ids)s::text[], %(outcomes)s::text[],
            %(provider_statuses)s::text[], %(error_codes)s::text[], %(details)s::text[],
            %(suppress_reasons)s::text[], %(occurred_ats)s::timestamptz[], %(dedupe_keys)s::text[])
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id
"""

# Apply receipts %(receipt_ids)s to their notifications: the notification of a channel of the
# receipt's kind (%(channel_names)s / %(channel_kinds)s: the configured channels) whose 'sent'
# event carries the receipt's provider message id (index event_provider_message_idx). A
# receipt that matches none stays pending (its notification's send is not recorded yet, or it
# is not ours) and is tried again by PENDING_RECEIPTS.
# The rules, the same whatever order receipts arrive in:
# - a receipt changes the status only of a notification the provider accepted (sent,
#   delivered, undelivered) in the send the receipt is about (its current provider message
#   id); the final status is the strongest of its receipts:
#   undelivered > delivered > sent. So an `undelivered` (a bounce) is never undone by a
#   `delivered` that arrives after it, and a `delivered` that arrived before our `sent` was
#   recorded applies as soon as it is;
# - every receipt is an event in the history (provider status and error code), also the
#   informational ones (opened, deferred) and those about an earlier send of a notification
#   resent since, which change nothing else;
# - a receipt with a suppress_reason adds the recipient to the client's suppression list.
# Lock order: receipt rows, then notification rows (in id order); the status events of the
# changes are written by the trigger notification_status_changed.
APPLY_RECEIPTS = """
WITH kinds AS (
    SELECT * FROM unnest(%(channel_names)s::text[], %(channel_kinds)s::text[]) AS k(channel, kind)
), matched AS (
    SELECT r.id, r.source, r.kind, r.outcome, r.provider_status, r.error_code, r.detail, r.suppress_reason,
           r.provider_message_id, r.occurred_at, n.id AS notification_id, n.client_id, n.recipient,
           CASE WHEN n.provider_message_id = r.provider_message_id THEN n.status ELSE 'resent' END AS status,
           n.attempts,
           CASE r.outcome WHEN 'undelivered' THEN 2 WHEN 'delivered' THEN 1 ELSE 0 END AS strength
    FROM receipt r
    JOIN notification n ON n.id IN (SELECT e.notification_id FROM notification_event e
                                    WHERE e.provider_message_id = r.provider_message_id AND e.status = 'sent')
    JOIN kinds k ON k.channel = n.channel AND k.kind = r.kind
    WHERE r.id = ANY(%(receipt_ids)s::bigint[]) AND r.applied_at IS NULL AND r.provider_message_id <> ''
    ORDER BY n.id, r.id
    FOR UPDATE OF r, n
), verdict AS (
    SELECT notification_id, max(strength) AS strength,
           (array_agg(concat_ws(': ', nullif(error_code, ''), nullif(detail, '')) ORDER BY id DESC)
                FILTER (WHERE outcome = 'undelivered'))[1] AS error
    FROM matched
    WHERE status IN ('sent', 'delivered', 'undelivered')
    GROUP BY notification_id
), changed AS (
    UPDATE notification n
    SET status = CASE v.strength WHEN 2 THEN 'undelivered' ELSE 'delivered' END,
        last_error = CASE WHEN v.strength = 2 THEN coalesce(nullif(v.error, ''), 'undelivered') ELSE n.last_error END,
        updated_at = statement_timestamp()
    FROM verdict v
    WHERE n.id = v.notification_id
      AND v.strength > CASE n.status WHEN 'undelivered' THEN 2 WHEN 'delivered' THEN 1 ELSE 0 END
    RETURNING n.id, n.status
), applied AS (
    UPDATE receipt r SET notification_id = m.notification_id, applied_at = statement_timestamp()
    FROM matched m WHERE r.id = m.id
), history AS (
    INSERT INTO notification_event (notification_id, status, attempt, error, provider_message_id,
                                    dispatcher, note, created_at)
    SELECT m.notification_id, coalesce(c.status, n.status), m.attempts,
           concat_ws(': ', nullif(m.error_code, ''), nullif(m.detail, '')), m.provider_message_id, '',
           'receipt from ' || m.source || ': ' || m.provider_status
           || coalesce(' at ' || to_char(m.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'), '')
           || CASE WHEN m.status NOT IN ('sent', 'delivered', 'undelivered')
                   THEN ' (about an earlier send: the notification is ' || n.status || ')' ELSE '' END
           || CASE WHEN m.suppress_reason <> '' THEN '; recipient added to the suppression list' ELSE '' END,
           statement_timestamp()
    FROM matched m JOIN notification n ON n.id = m.notification_id LEFT JOIN changed c ON c.id = m.notification_id
), suppressed AS (
    INSERT INTO suppression (client_id, kind, recipient, reason, notification_id, created_at)
    SELECT DISTINCT ON (client_id, kind, recipient) client_id, kind, recipient, suppress_reason, notification_id,
           statement_timestamp()
    FROM matched
    WHERE suppress_reason <> ''
    ORDER BY client_id, kind, recipient, id
    ON CONFLICT (client_id, kind, recipient) DO NOTHING
)
SELECT count(*) FROM matched
"""

# Pending receipts (received in the last %(window_seconds)s, not applied) whose notification
# now has a 'sent' event with their provider message id: they came before the send was
# recorded. Run by the
# dispatchers now and then, in a transaction with APPLY_RECEIPTS; index receipt_pending_idx
# holds only the pending ones, so this costs next to nothing when there are none.
PENDING_RECEIPTS = """
SELECT r.id FROM receipt r
WHERE r.applied_at IS NULL
  AND r.received_at > statement_timestamp() - make_interval(secs => %(window_seconds)s)
  AND EXISTS (SELECT 1 FROM notification_event e WHERE e.provider_message_id = r.provider_message_id
              AND e.status = 'sent' AND r.provider_message_id <> '')
ORDER BY r.id
LIMIT 1000
FOR UPDATE OF r SKIP LOCKED
"""

# --- channels that are no longer configured (outbox.unconfigured) --------------------------------
# A channel removed from (or renamed in) the channels file leaves its outbox rows to nobody: no
# dispatcher claims for it. These find such rows, and move them to another channel or fail them.

# The channels that have outbox rows, but are not among %(configured)s, with their rows
# (pending), those leased to a dispatcher right now (leased: a dispatcher with an older
# channels file still serves it) and their kind as last recorded (channel_kind). The channels
# present are found by a loose index scan of outbox_claim_idx (led by the channel): one probe
# per channel, however long the backlog of the configured ones; the counts then read the
# index's range of each unconfigured channel only. Reads only: no lock.
UNCONFIGURED_CHANNELS = """
WITH RECURSIVE present AS (
    (SELECT channel FROM outbox ORDER BY channel LIMIT 1)
    UNION ALL
    SELECT (SELECT o.channel FROM outbox o WHERE o.channel > p.channel ORDER BY o.channel LIMIT 1)
    FROM present p
    WHERE p.channel IS NOT NULL
)
SELECT p.channel, k.kind, c.pending, c.leased
FROM present p
LEFT JOIN channel_kind k ON k.channel = p.channel
CROSS JOIN LATERAL (
    SELECT count(*) AS pending,
           count(*) FILTER (WHERE o.locked_by IS NOT NULL AND o.run_at > statement_timestamp()) AS leased
    FROM outbox o WHERE o.channel = p.channel
) c
WHERE p.channel IS NOT NULL AND p.channel <> ALL(%(configured)s::text[])
ORDER BY p.channel
"""

# The kinds of the configured channels, as this process sees them (one row each).
RECORD_CHANNEL_KINDS = """
INSERT INTO channel_kind (channel, kind, backend, seen_at)
SELECT channel, kind, backend, statement_timestamp()
FROM unnest(%(channels)s::text[], %(kinds)s::text[], %(backends)s::text[]) AS t(channel, kind, backend)
ON CONFLICT (channel) DO UPDATE SET kind = EXCLUDED.kind, backend = EXCLUDED.backend, seen_at = EXCLUDED.seen_at
"""

# Up to %(limit)s rows of channel %(channel)s that no live lease holds, with what the target
# channel must accept before they move (its validation), but those in %(skip)s (refused by it
# already). Index outbox_claim_idx (channel, ...); the notifications by primary key. No lock:
# MOVE_TO_CHANNEL re-checks each row under its lock.
MOVE_CANDIDATES = """
SELECT o.id, n.recipient, n.subject, n.message, n.html, n.metadata
FROM outbox o JOIN notification n ON n.id = o.notification_id
WHERE o.channel = %(channel)s AND (o.locked_by IS NULL OR o.run_at <= statement_timestamp())
  AND o.id <> ALL(%(skip)s::bigint[])
LIMIT %(limit)s
"""

# Move outbox rows %(outbox_ids)s of channel %(channel)s (no longer configured) to channel
# %(to)s, as an operator asked (`manage.py unconfigured_channels CHANNEL --to NAME`):
# - only rows that no live lease holds: a row leased to a dispatcher (one that still serves
#   the old channel) is left to it, and a row locked by a claim right now is skipped (FOR
#   UPDATE SKIP LOCKED), both for a later run. A lease that lapsed is dropped; if its send had
#   started, the outcome of that attempt is unknown and the notification goes back to
#   'retrying', as CLAIM does for a lapsed lease (at least once: it is sent again);
# - the row keeps its due time (run_at), priority and attempts; it now belongs to %(to)s alone
#   (origin NULL: the failover of the new channel's own fallbacks applies, counted from now);
# - the notification's channel follows, and its history says who moved it, from where, to where.
# Fencing: the lease token is cleared, so a dispatcher that still held a lapsed lease records
# nothing for it (RECORD matches no row). Lock order: outbox rows, then notification rows.
MOVE_TO_CHANNEL = """
WITH moving AS (
    SELECT o.id, o.locked_by IS NOT NULL AND o.sending AS was_sending
    FROM outbox o
    WHERE o.id = ANY(%(outbox_ids)s::bigint[]) AND o.channel = %(channel)s
      AND (o.locked_by IS NULL OR o.run_at <= statement_timestamp())
    ORDER BY o.id
    FOR UPDATE OF o SKIP LOCKED
), moved AS (
    UPDATE outbox o
    SET channel = %(to)s, origin = NULL, moved_at_attempt = o.attempts,
        locked_by = NULL, lease_token = NULL, sending = false
    FROM moving m
    WHERE o.id = m.id
    RETURNING o.notification_id, o.attempts, m.was_sending
), renamed AS (
    UPDATE notification n
    SET channel = %(to)s, updated_at = statement_timestamp(),
        status = CASE WHEN m.was_sending THEN 'retrying' ELSE n.status END,
        last_error = CASE WHEN m.was_sending THEN 'lease expired during the send; outcome unknown' ELSE n.last_error END
    FROM moved m
    WHERE n.id = m.notification_id
    RETURNING n.id, n.status
), moved_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error, provider_message_id,
                                    dispatcher, note, created_at)
    SELECT m.notification_id, r.status, m.attempts, '', '', '',
           'moved from channel ' || %(channel)s || ' (no longer configured) to ' || %(to)s || ' by ' || %(by)s
           || CASE WHEN m.was_sending THEN '; the send of attempt ' || m.attempts || ' had started on '
                   || %(channel)s || ' and its outcome is unknown' ELSE '' END,
           statement_timestamp()
    FROM moved m JOIN renamed r ON r.id = m.notification_id
)
SELECT count(*) FROM moved
"""

# Fail up to %(limit)s rows of channel %(channel)s (no longer configured), as an operator
# asked (`manage.py unconfigured_channels CHANNEL --fail`): the outbox row goes, as RECORD's
# does for a failure; the notification stays, 'failed' with %(reason)s as its error, and its
# history says who failed it and why. The same rows as MOVE_TO_CHANNEL's: none that a live
# lease holds, none locked by a claim now. Index outbox_claim_idx (channel, ...) finds them.
# Lock order: outbox rows, then notification rows.
FAIL_CHANNEL = """
WITH failing AS (
    SELECT o.id, o.locked_by IS NOT NULL AND o.sending AS was_sending
    FROM outbox o
    WHERE o.channel = %(channel)s AND (o.locked_by IS NULL OR o.run_at <= statement_timestamp())
    LIMIT %(limit)s
    FOR UPDATE OF o SKIP LOCKED
), removed AS (
    DELETE FROM outbox o
    USING failing f
    WHERE o.id = f.id
    RETURNING o.notification_id, o.attempts, f.was_sending
), failed AS (
    UPDATE notification n
    SET status = 'failed', last_error = %(reason)s, updated_at = statement_timestamp()
    FROM removed r
    WHERE n.id = r.notification_id
), failed_event AS (
    INSERT INTO notification_event (notification_id, status, attempt, error, provider_message_id,
                                    dispatcher, note, created_at)
    SELECT r.notification_id, 'failed', r.attempts, %(reason)s, '', '',
           'failed by ' || %(by)s || ': channel ' || %(channel)s || ' is no longer configured'
           || CASE WHEN r.was_sending THEN '; the send of attempt ' || r.attempts
                   || ' had started and its outcome is unknown' ELSE '' END,
           statement_timestamp()
    FROM removed r
)
SELECT count(*) FROM removed
"""
