"""The outbox's operations, each one statement of outbox/sql.py on the calling thread's
Django connection: enqueue (intake), claim, start and record outcomes (dispatchers), cancel
and resend (API and admin). Which statuses can be cancelled or resent is
notifications.models.Status's definition, passed to the SQL as parameters."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Mapping, Sequence

from django.conf import settings
from django.db import connection, transaction
from psycopg.types.json import Jsonb

from channels.base import Message
from channels.policy import ChannelPolicy
from channels.receipts import Receipt
from notifications.errors import RateLimited
from notifications.models import Status

from . import sql

PRIORITIES = (0, 1, 2)  # high, normal, low: notifications.models.Priority


@dataclass(frozen=True)
class NewNotification:
    """A validated notification to enqueue."""

    id: uuid.UUID
    channel: str
    recipient: str
    message: str
    subject: str = ""
    metadata: dict | None = None
    priority: int = 1
    send_at: datetime | None = None
    expires_at: datetime | None = None
    kind: str = ""  # its channel's kind, for the suppression list
    ignore_suppression: bool = False  # send even if the recipient is suppressed
    html: str = ""  # rendered from a template: the HTML part, and the template it came from
    template: str = ""
    template_version: int | None = None
    locale: str = ""


@dataclass(frozen=True)
class Enqueued:
    """What the database assigned to an enqueued notification."""

    id: uuid.UUID
    status: str
    created_at: datetime
    last_error: str = ""  # why it was not queued (suppressed)


class _NotifyDebounce:
    """At most one NOTIFY per window per process.

    A NOTIFY makes its transaction take a cluster-wide lock at commit, which serialises
    committing API requests under load. One wake-up per window is enough: a dispatcher that
    was woken looks again once the window has passed (see Dispatcher), which covers the
    transactions that skipped their NOTIFY inside it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = float("-inf")

    def allow(self) -> bool:
        window = settings.OUTBOX["NOTIFY_DEBOUNCE_MS"] / 1000
        now = time.monotonic()
        with self._lock:
            if now - self._last < window:
                return False
            self._last = now
            return True


_notify_debounce = _NotifyDebounce()


def _dump_rows(rows: list[dict]) -> str:
    """ENQUEUE's rows as JSON: ids as text, times in ISO 8601 (with their offset)."""
    return json.dumps(rows, default=lambda value: value.isoformat() if isinstance(value, datetime) else str(value),
                      ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class RateLimit:
    """A client's rate limit for the whole fleet: at most `limit` per fixed window of `period`
    seconds, counted in `shards` rows (outbox/sql.py, RATE_TAKE)."""

    limit: int
    period: int
    shards: int = 1


def _rate_params(rate: RateLimit, cost: int) -> dict:
    # A random shard per request spreads one client's concurrent requests over the rows.
    return {"rate_limit": rate.limit, "rate_period": rate.period, "rate_cost": cost,
            "rate_shard": random.randrange(rate.shards) if rate.shards > 1 else 0}


def enqueue(notifications: Sequence[NewNotification], *, client_id: int,
            rate: RateLimit | None = None) -> list[Enqueued]:
    """Insert notifications, their first events and outbox rows in one statement.

    With a `rate`, the same statement first takes their number from the client's counter
    (ENQUEUE_COUNTED) and writes nothing if that is over the limit: RateLimited, with the
    seconds to the window's end. Returns what was written, in input order. Atomic on its own;
    inside an outer transaction.atomic() it commits with it.
    """
    rows = [{"id": n.id, "channel": n.channel, "recipient": n.recipient, "subject": n.subject,
             "message": n.message, "metadata": n.metadata or {}, "priority": n.priority, "send_at": n.send_at,
             "expires_at": n.expires_at, "kind": n.kind, "ignore_suppression": n.ignore_suppression,
             "html": n.html, "template": n.template, "template_version": n.template_version, "locale": n.locale}
            for n in notifications]
    params = {"client_id": client_id, "rows": Jsonb(rows, dumps=_dump_rows), "notify": _notify_debounce.allow()}
    if rate is not None:
        params.update(_rate_params(rate, len(notifications)))
    with connection.cursor() as cursor:
        cursor.execute(sql.ENQUEUE if rate is None else sql.ENQUEUE_COUNTED, params)
        result = cursor.fetchall()
    if rate is not None and len(result) == 1 and result[0][0] is None:
        raise RateLimited(retry_after=result[0][5], limit=rate.limit, period=rate.period)
    written = {row[0]: Enqueued(row[0], row[1], row[2], row[3]) for row in result}
    return [written[n.id] for n in notifications]


def take_rate(*, client_id: int, rate: RateLimit, cost: int = 1) -> int | None:
    """Take `cost` from the client's rate counter (RATE_TAKE), one statement of its own: None
    if taken, else the seconds to the window's end (nothing was counted)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.RATE_TAKE, {"client_id": client_id, **_rate_params(rate, cost)})
        return cursor.fetchone()[0]


def take_idempotency_key(*, client_id: int, key: str, request_hash: str,
                         notification_ids: list[uuid.UUID], ttl_seconds: float) -> tuple[str, list[uuid.UUID]] | None:
    """Take `key` for this request (call inside the transaction that enqueues).

    Returns None if the key is now this request's, or (request_hash, notification_ids) of the
    earlier request that holds it.
    """
    params = {"client_id": client_id, "key": key, "request_hash": request_hash,
              "notification_ids": notification_ids, "ttl_seconds": ttl_seconds}
    with connection.cursor() as cursor:
        cursor.execute(sql.TAKE_IDEMPOTENCY_KEY, params)
        if cursor.fetchone() is not None:
            return None
        cursor.execute(sql.SELECT_IDEMPOTENCY_KEY, params)
        request_hash_before, ids = cursor.fetchone()
    return request_hash_before, list(ids)


@dataclass(frozen=True)
class Delivery:
    """A claimed outbox row: the message to send and the lease it is sent under."""

    outbox_id: int
    lease_token: uuid.UUID
    channel: str
    message: Message
    attempt: int
    lease_expires: float  # time.monotonic() by which the send must have started
    probe: bool = False  # the one send that tests a channel whose circuit breaker was open
    origin: str | None = None  # the channel it was accepted for, once it failed over
    moved_at_attempt: int = 0  # its attempts when it moved: attempt - this are on `channel`
    started: bool = False  # the claim also started it (CLAIM's start_limits): send it now, no START

    @property
    def notification_id(self) -> str:
        return self.message.notification_id


def claim(*, dispatcher: str, limit: int, lease_seconds: float, channels: Iterable[str] | Mapping[str, int],
          max_attempts: int | None = None, policies: Mapping[str, ChannelPolicy] | None = None,
          start: Mapping[str, int] | None = None) -> list[Delivery]:
    """Lease up to `limit` due rows of `channels` to `dispatcher` and return them; `channels`
    may map each channel to the most rows to take of it. `start` (channel -> how many) starts
    that many of each channel's rows in the same statement, as start() would: they come back
    with `started` set and must be sent now. `policies` (channel -> its policy)
    caps each channel by its rate budget and circuit breaker, shared by the fleet (their rows
    must exist: ensure_channel_states). A row whose lease lapsed during its send after
    `max_attempts` attempts (default OUTBOX_MAX_ATTEMPTS) is failed instead."""
    if max_attempts is None:
        max_attempts = settings.OUTBOX["MAX_ATTEMPTS"]
    limits = dict(channels) if isinstance(channels, Mapping) else dict.fromkeys(channels, limit)
    token = uuid.uuid4()
    claimed_at = time.monotonic()
    # Every (priority, channel) pair, priorities first; channels in a new order each time.
    channel_order = random.sample(list(limits), len(limits))
    pairs = [(priority, channel) for priority in PRIORITIES for channel in channel_order]
    governed = [(name, policy) for name, policy in (policies or {}).items() if name in limits and policy.governs_claims]
    per_recipient = [name for name, policy in governed if policy.recipient_rate_limit]
    with transaction.atomic() if per_recipient else nullcontext(), connection.cursor() as cursor:
        if per_recipient:
            cursor.execute(sql.LOCK_CHANNEL_STATES, {"channels": sorted(per_recipient)})
        cursor.execute(
            sql.CLAIM,
            {"policy_channels": [name for name, _ in governed],
             "policy_rates": [p.rate_limit.per_second if p.rate_limit else None for _, p in governed],
             "policy_bursts": [p.rate_limit.burst if p.rate_limit else None for _, p in governed],
             "policy_recipient_rates": [p.recipient_rate_limit.per_second if p.recipient_rate_limit else None
                                        for _, p in governed],
             "policy_recipient_bursts": [p.recipient_rate_limit.burst if p.recipient_rate_limit else None
                                         for _, p in governed],
             "policy_breakers": [p.circuit_breaker is not None for _, p in governed],
             "priorities": [p for p, _ in pairs], "channels": [c for _, c in pairs],
             "channel_limits": [min(limits[c], limit) for _, c in pairs], "limit": limit,
             "dispatcher": dispatcher, "lease_token": token, "lease_seconds": lease_seconds,
             "max_attempts": max_attempts,
             "start_channels": list(start or ()), "start_limits": list((start or {}).values())},
        )
        rows = cursor.fetchall()
    # The lease is measured from before the statement ran, so the local deadline errs early.
    lease_expires = claimed_at + lease_seconds
    return [
        Delivery(
            outbox_id=outbox_id,
            lease_token=token,
            channel=channel,
            # A raw cursor returns jsonb as text (Django decodes it only for model fields).
            message=Message(recipient=recipient, body=body, subject=subject, html=html,
                            metadata=json.loads(metadata) if isinstance(metadata, str) else (metadata or {}),
                            notification_id=str(notification_id), attempt=attempt),
            attempt=attempt,
            lease_expires=lease_expires,
            probe=probe,
            origin=origin,
            moved_at_attempt=moved_at_attempt,
            started=started,
        )
        for (outbox_id, notification_id, channel, recipient, subject, body, metadata, attempt, _, probe,
             origin, moved_at_attempt, html, started) in rows
    ]


def ensure_channel_states(policies: Mapping[str, ChannelPolicy]) -> None:
    """Create the channel_state row of each channel whose policy governs claims (its bucket
    full); existing rows are left as they are."""
    governed = {name: p for name, p in policies.items() if p.governs_claims}
    if not governed:
        return
    with connection.cursor() as cursor:
        cursor.execute(sql.ENSURE_CHANNEL_STATE, {
            "channels": list(governed),
            "bursts": [p.rate_limit.burst if p.rate_limit else 0.0 for p in governed.values()],
        })


def failover_from_open(*, channels: Sequence[str], routes: Mapping[str, Sequence[str]], dispatcher: str,
                       limit: int = 1000) -> int:
    """Move due rows of `channels` whose circuit breaker is open to the next channel of their
    origin's fallback route (`routes`: channel -> its fallback list); how many moved."""
    with connection.cursor() as cursor:
        cursor.execute(sql.FAILOVER_FROM_OPEN, {"channels": list(channels), "routes": Jsonb(dict(routes)),
                                                "limit": limit, "dispatcher": dispatcher})
        return cursor.fetchone()[0]


def prune_recipient_budgets(policies: Mapping[str, ChannelPolicy]) -> int:
    """Delete recipient buckets that have been full long enough (PRUNE_RECIPIENT_BUDGETS)."""
    rates = [p.recipient_rate_limit for p in policies.values() if p.recipient_rate_limit]
    if not rates:
        return 0
    idle = max(3600.0, *(rate.burst / rate.per_second for rate in rates))
    with connection.cursor() as cursor:
        cursor.execute(sql.PRUNE_RECIPIENT_BUDGETS, {"idle_seconds": idle})
        return cursor.rowcount


@dataclass(frozen=True)
class ChannelTransition:
    """A breaker that changed state, from a batch of outcomes."""

    channel: str
    before: str
    after: str
    failures: int


def record_channel_outcomes(outcomes: Sequence[Outcome], policies: Mapping[str, ChannelPolicy]) -> list[ChannelTransition]:
    """Count a batch's outcomes into the breakers and pauses of their channels (CHANNEL_OUTCOMES);
    the breakers that changed state."""
    seen: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        policy = policies.get(outcome.delivery.channel)
        if policy is not None and policy.governs_claims:
            seen.setdefault(outcome.delivery.channel, []).append(outcome)
    if not seen:
        return []
    rows = []
    for channel, its in sorted(seen.items()):
        policy = policies[channel]
        through = [i for i, o in enumerate(its) if not o.provider_down]
        down = [i for i, o in enumerate(its) if o.provider_down]
        pauses = [o.retry_after for o in its if o.retry_after is not None]
        breaker = policy.circuit_breaker
        rows.append({
            "channels": channel, "got_through": bool(through),
            "trailing_failures": len(its) - 1 - through[-1] if through else len(its),
            "any_failure": bool(down), "trailing_successes": len(its) - 1 - down[-1] if down else len(its),
            "thresholds": breaker.failures if breaker else None, "cool_downs": breaker.cool_down if breaker else None,
            "pauses": max(pauses) if pauses and policy.rate_limit else None,
        })
    with connection.cursor() as cursor:
        cursor.execute(sql.CHANNEL_OUTCOMES, {key: [row[key] for row in rows] for key in rows[0]})
        return [ChannelTransition(*row) for row in cursor.fetchall() if row[1] != row[2]]


def start(deliveries: Sequence[Delivery], *, dispatcher: str) -> set[int]:
    """Mark deliveries as being sent; returns the outbox ids that may be sent now (the others
    were cancelled, lost their lease, or expired)."""
    with connection.cursor() as cursor:
        cursor.execute(
            sql.START,
            {"outbox_ids": [d.outbox_id for d in deliveries],
             "lease_tokens": [d.lease_token for d in deliveries], "dispatcher": dispatcher},
        )
        return {row[0] for row in cursor.fetchall()}


@dataclass(frozen=True)
class Outcome:
    """The result of one send. `status` is 'sent', 'failed' or 'retrying'."""

    delivery: Delivery
    status: str
    error: str = ""
    provider_message_id: str = ""
    retry_delay: float = 0.0  # seconds, for 'retrying'
    duration: float = 0.0  # seconds the send took
    ended_at: float = 0.0  # when it ended (Unix time), for the log
    provider_down: bool = False  # a transient failure: counts towards the channel's breaker
    retry_after: float | None = None  # the provider's own "come back after", in seconds
    move_to: str | None = None  # for 'retrying': fail over to this channel (channels.policy fallback)
    # For 'failed': the recipient refused for good (channels.errors.RecipientRefusedError), and
    # joins the client's suppression list for the channel's kind.
    suppress_reason: str = ""
    kind: str = ""


def record_outcomes(outcomes: Sequence[Outcome], *, dispatcher: str) -> int:
    """Record a batch of outcomes, whatever their kinds, in one statement (RECORD).

    Returns how many were recorded; the rest had lost their lease (fenced out).
    """
    if not outcomes:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(sql.RECORD, {
            "outbox_ids": [o.delivery.outbox_id for o in outcomes],
            "lease_tokens": [o.delivery.lease_token for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "errors": [o.error for o in outcomes],
            "provider_message_ids": [o.provider_message_id for o in outcomes],
            "kinds": [o.kind for o in outcomes],
            "suppress_reasons": [o.suppress_reason for o in outcomes],
            "delays": [float(o.retry_delay) for o in outcomes],
            "move_tos": [o.move_to for o in outcomes],
            "dispatcher": dispatcher,
        })
        return cursor.rowcount


def release(deliveries: Sequence[Delivery]) -> None:
    """Give back leased rows whose send has not started (a dispatcher stopping)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.RELEASE, {"outbox_ids": [d.outbox_id for d in deliveries],
                                     "lease_tokens": [d.lease_token for d in deliveries]})


def cancel(*, notification_id: uuid.UUID, client_id: int, note: str) -> tuple[str | None, bool]:
    """Cancel a notification whose status is cancellable (Status.cancellable()) unless its send
    has started: (status before or None, cancelled)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.CANCEL, {"notification_id": notification_id, "client_id": client_id, "note": note,
                                    "cancellable": [str(s) for s in Status.cancellable()]})
        status_before, cancelled = cursor.fetchone()
    return status_before, cancelled


def resend(*, notification_id: uuid.UUID, client_id: int, note: str) -> tuple[str | None, bool]:
    """Queue a notification whose status is resendable (Status.resendable()) again:
    (status before or None, resent)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.RESEND, {"notification_id": notification_id, "client_id": client_id, "note": note,
                                    "resendable": [str(s) for s in Status.resendable()]})
        status_before, resent, _ = cursor.fetchone()
    return status_before, resent


# --- receipts -----------------------------------------------------------------------------------

# How long a receipt waits for its notification's send to be recorded (APPLY_PENDING_RECEIPTS).
RECEIPT_WAIT_SECONDS = 24 * 3600


def record_receipts(receipts: Sequence[Receipt], *, channel_kinds: Mapping[str, str]) -> tuple[int, int]:
    """Store receipts and apply those whose notification is known (RECORD_RECEIPTS and
    APPLY_RECEIPTS, one transaction). `channel_kinds`: every configured channel's kind.
    Returns (new, applied): how many were not seen before, and how many of those matched a
    notification; the others wait (apply_pending_receipts)."""
    if not receipts:
        return 0, 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.RECORD_RECEIPTS, {
            "sources": [r.source for r in receipts], "kinds": [r.kind for r in receipts],
            "provider_message_ids": [r.provider_message_id for r in receipts],
            "outcomes": [r.outcome for r in receipts], "provider_statuses": [r.provider_status for r in receipts],
            "error_codes": [r.error_code for r in receipts], "details": [r.detail for r in receipts],
            "suppress_reasons": [r.suppress_reason for r in receipts],
            "occurred_ats": [r.occurred_at for r in receipts], "dedupe_keys": [r.dedupe_key for r in receipts],
        })
        new = [row[0] for row in cursor.fetchall()]
        return len(new), _apply_receipts(cursor, new, channel_kinds) if new else 0


def apply_pending_receipts(*, channel_kinds: Mapping[str, str]) -> int:
    """Apply the receipts that came before their notification's send was recorded (those
    received in the last RECEIPT_WAIT_SECONDS); how many were applied."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.PENDING_RECEIPTS, {"window_seconds": RECEIPT_WAIT_SECONDS})
        pending = [row[0] for row in cursor.fetchall()]
        return _apply_receipts(cursor, pending, channel_kinds) if pending else 0


def _apply_receipts(cursor, receipt_ids: list[int], channel_kinds: Mapping[str, str]) -> int:
    cursor.execute(sql.APPLY_RECEIPTS, {"receipt_ids": receipt_ids, "channel_names": list(channel_kinds),
                                        "channel_kinds": list(channel_kinds.values())})
    return cursor.fetchone()[0]
