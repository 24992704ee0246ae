"""The outbox's operations: enqueue (intake), claim and record outcomes (dispatchers).

Each runs one statement from outbox/sql.py on Django's connection for the calling thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

from django.conf import settings
from django.db import connection, transaction
from psycopg.types.json import Jsonb

from channels.base import Message

from . import sql


@dataclass(frozen=True)
class NewNotification:
    """A validated notification to enqueue."""

    id: uuid.UUID
    channel: str
    recipient: str
    message: str
    subject: str = ""
    metadata: dict | None = None


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


def enqueue(notifications: Sequence[NewNotification]) -> list[datetime]:
    """Insert notifications, their 'queued' events and outbox rows in one statement.

    Returns each notification's created_at, in input order. Atomic on its own; inside an
    outer transaction.atomic() it commits with it.
    """
    params = {
        "ids": [n.id for n in notifications],
        "channels": [n.channel for n in notifications],
        "recipients": [n.recipient for n in notifications],
        "subjects": [n.subject for n in notifications],
        "messages": [n.message for n in notifications],
        "metadata": [Jsonb(n.metadata or {}) for n in notifications],
        "notify": _notify_debounce.allow(),
    }
    with connection.cursor() as cursor:
        cursor.execute(sql.ENQUEUE, params)
        created = {row[0]: row[1] for row in cursor.fetchall()}
    return [created[n.id] for n in notifications]


@dataclass(frozen=True)
class Delivery:
    """A claimed outbox row: the message to send and the lease it is sent under."""

    outbox_id: int
    lease_token: uuid.UUID
    channel: str
    message: Message
    attempt: int
    lease_expires: float  # time.monotonic() by which the send must have started

    @property
    def notification_id(self) -> str:
        return self.message.notification_id


def claim(*, dispatcher: str, limit: int, lease_seconds: float, channels: Iterable[str] | None = None) -> list[Delivery]:
    """Lease up to `limit` due rows to `dispatcher` (one short transaction) and return them."""
    token = uuid.uuid4()
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            sql.CLAIM,
            {
                "channels": list(channels) if channels else None,
                "limit": limit,
                "dispatcher": dispatcher,
                "lease_token": token,
                "lease_seconds": lease_seconds,
            },
        )
        rows = cursor.fetchall()
    # The lease is measured from before the statement ran, so the local deadline errs early.
    lease_expires = started + lease_seconds
    return [
        Delivery(
            outbox_id=outbox_id,
            lease_token=token,
            channel=channel,
            message=Message(
                recipient=recipient,
                body=body,
                subject=subject,
                metadata=metadata or {},
                notification_id=str(notification_id),
                attempt=attempts,
            ),
            attempt=attempts,
            lease_expires=lease_expires,
        )
        for outbox_id, notification_id, channel, recipient, subject, body, metadata, attempts in rows
    ]


@dataclass(frozen=True)
class Outcome:
    """The result of one send. `status` is 'sent', 'failed' or 'retrying'."""

    delivery: Delivery
    status: str
    error: str = ""
    provider_message_id: str = ""
    retry_delay: float = 0.0  # seconds, for 'retrying'


def record_outcomes(outcomes: Sequence[Outcome], *, dispatcher: str) -> int:
    """Record a batch of outcomes: at most two statements, in one transaction.

    Returns how many were recorded; the rest had lost their lease (fenced out).
    """
    final = [o for o in outcomes if o.status != "retrying"]
    retrying = [o for o in outcomes if o.status == "retrying"]
    recorded = 0
    with transaction.atomic(), connection.cursor() as cursor:
        if final:
            cursor.execute(
                sql.FINISH,
                {
                    "outbox_ids": [o.delivery.outbox_id for o in final],
                    "lease_tokens": [o.delivery.lease_token for o in final],
                    "statuses": [o.status for o in final],
                    "errors": [o.error for o in final],
                    "provider_message_ids": [o.provider_message_id for o in final],
                    "dispatcher": dispatcher,
                },
            )
            recorded += cursor.rowcount
        if retrying:
            cursor.execute(
                sql.RETRY,
                {
                    "outbox_ids": [o.delivery.outbox_id for o in retrying],
                    "lease_tokens": [o.delivery.lease_token for o in retrying],
                    "errors": [o.error for o in retrying],
                    "delays": [o.retry_delay for o in retrying],
                    "dispatcher": dispatcher,
                },
            )
            recorded += cursor.rowcount
    return recorded
