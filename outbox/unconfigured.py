"""Notifications left for channels that are no longer configured.

A channel removed from the channels file (or renamed there) while notifications for it are
pending leaves their outbox rows `scheduled`, `queued`, `retrying` or `sending` for ever: no
dispatcher claims for a channel it does not have. This module finds them, for everything that
tells the operator (`manage.py check`, `run_dispatchers` at start, the admin's outbox page,
/metrics), and resolves them as the operator decides (`manage.py unconfigured_channels`):
moved to another configured channel of the same kind, or failed with a reason, each with a
line in the notification's history. Nothing is deleted but the outbox rows of notifications
failed that way, as for any failure. The statements are outbox/sql.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from django.db import connection

from channels.base import Channel, Message
from channels.errors import InvalidMessage
from channels.registry import STATUS_WEBHOOKS_CHANNEL

from . import sql

BATCH = 500  # rows per statement when moving or failing


@dataclass(frozen=True)
class UnconfiguredChannel:
    """A channel with outbox rows that this process's channels file does not configure."""

    channel: str
    pending: int  # its outbox rows: scheduled, queued, retrying or being sent
    leased: int  # of those, leased to a dispatcher now (one with an older channels file?)
    kind: str | None  # as last recorded (ChannelKind); None if never

    def describe(self) -> str:
        """One line for people: the channel, its kind, its pending count, and what to do."""
        kind = f" ({self.kind})" if self.kind else ""
        leased = f", {self.leased} leased to a dispatcher right now" if self.leased else ""
        return (f"channel {self.channel!r}{kind} is not configured but has {self.pending} notification(s) pending "
                f"in the outbox{leased}; no dispatcher serves it. Move them to a configured channel of the same "
                f"kind with `manage.py unconfigured_channels {self.channel} --to NAME`, or fail them with "
                f"`manage.py unconfigured_channels {self.channel} --fail --reason TEXT`.")


def find(configured: Iterable[str]) -> list[UnconfiguredChannel]:
    """Every channel with outbox rows that is not in `configured` (UNCONFIGURED_CHANNELS)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.UNCONFIGURED_CHANNELS, {"configured": sorted(configured)})
        return [UnconfiguredChannel(channel=channel, kind=kind, pending=pending, leased=leased)
                for channel, kind, pending, leased in cursor.fetchall()]


def record_kinds(channels: Mapping[str, Channel]) -> None:
    """Remember the kind of each configured channel (RECORD_CHANNEL_KINDS), for the day one of
    them is removed and its notifications move."""
    if not channels:
        return
    with connection.cursor() as cursor:
        cursor.execute(sql.RECORD_CHANNEL_KINDS, {
            "channels": list(channels), "kinds": [c.kind for c in channels.values()],
            "backends": [f"{type(c).__module__}.{type(c).__qualname__}" for c in channels.values()],
        })


class CannotMove(Exception):
    """The move was refused as a whole: nothing was written."""


@dataclass
class Resolution:
    """What a move or a fail did to a channel's rows."""

    done: int = 0  # moved, or failed
    refused: dict[int, str] = field(default_factory=dict)  # outbox id -> why the target refused it
    left: int = 0  # still on the channel afterwards (leased now, locked by a claim, or refused)


def move(*, channel: str, to: Channel, configured: Mapping[str, Channel], by: str) -> Resolution:
    """Move the rows of unconfigured `channel` that no live lease holds to channel `to`.

    `to` must be configured, not the status webhooks' channel, and of the kind recorded for
    `channel` (when one was: otherwise only the check of each notification below applies);
    else CannotMove. Each notification must pass `to`'s own validation (its recipient and
    limits); those it refuses stay where they are, listed in the result with the reason.
    """
    _check_unconfigured(channel, configured)
    if configured.get(to.name) is not to:
        raise CannotMove(f"channel {to.name!r} is not configured")
    if to.name == STATUS_WEBHOOKS_CHANNEL:
        raise CannotMove(f"channel {to.name!r} delivers status webhooks only")
    kind = _recorded_kind(channel)
    if kind is not None and kind != to.kind:
        same = sorted(n for n, c in configured.items() if c.kind == kind and n != STATUS_WEBHOOKS_CHANNEL)
        raise CannotMove(f"channel {channel!r} was of kind {kind!r} and {to.name!r} is of kind {to.kind!r}; "
                         f"configured channels of kind {kind!r}: {', '.join(same) or 'none'}")
    result = Resolution()
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql.MOVE_CANDIDATES, {"channel": channel, "skip": list(result.refused), "limit": BATCH})
            candidates = cursor.fetchall()
            if not candidates:
                break
            accepted = []
            for outbox_id, recipient, subject, message, html, metadata in candidates:
                why = _refusal(to, recipient=recipient, subject=subject, message=message, html=html, metadata=metadata)
                if why is None:
                    accepted.append(outbox_id)
                else:
                    result.refused[outbox_id] = why
            if accepted:
                cursor.execute(sql.MOVE_TO_CHANNEL, {"outbox_ids": accepted, "channel": channel, "to": to.name,
                                                     "by": by})
                moved = cursor.fetchone()[0]
                result.done += moved
                if moved == 0 and len(accepted) == len(candidates):
                    break  # every candidate was locked by a claim just now: leave them to a later run
    result.left = _pending(channel)
    return result


def fail(*, channel: str, reason: str, configured: Mapping[str, Channel], by: str) -> Resolution:
    """Fail the rows of unconfigured `channel` that no live lease holds, with `reason` as the
    notifications' error; their history says who did it and why."""
    _check_unconfigured(channel, configured)
    result = Resolution()
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql.FAIL_CHANNEL, {"channel": channel, "reason": reason, "by": by, "limit": BATCH})
            failed = cursor.fetchone()[0]
        result.done += failed
        if failed < BATCH:
            break
    result.left = _pending(channel)
    return result


def _check_unconfigured(channel: str, configured: Mapping[str, Channel]) -> None:
    if channel in configured:
        raise CannotMove(f"channel {channel!r} is configured: its dispatchers serve it")


def _recorded_kind(channel: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT kind FROM channel_kind WHERE channel = %s", [channel])
        row = cursor.fetchone()
    return row[0] if row else None


def _pending(channel: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox WHERE channel = %s", [channel])  # index outbox_claim_idx
        return cursor.fetchone()[0]


def _refusal(to: Channel, *, recipient: str, subject: str, message: str, html: str, metadata) -> str | None:
    """Why `to` would refuse this notification (its own validation, as at intake), or None."""
    if isinstance(metadata, str):  # a raw cursor returns jsonb as text
        metadata = json.loads(metadata)
    try:
        to.validate(Message(recipient=recipient, body=message, subject=subject, html=html, metadata=metadata or {}))
    except InvalidMessage as exc:
        return f"{exc.field}: {exc.message}"
    return None
