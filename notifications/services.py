"""Writes of the notifications domain, shared by the API and the admin."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError

from channels.base import Message
from channels.errors import InvalidMessage
from channels.registry import all_channels
from outbox import store

from .ids import new_notification_id
from .models import Notification, Status


def notification_validate(*, channel: str, to: str, message: str, subject: str = "", metadata: dict | None = None) -> store.NewNotification:
    """Check a notification against its channel; return it normalised, ready to enqueue.

    Raises ValidationError naming the field: an unknown channel (listing the known ones), or a
    recipient or content the channel refuses.
    """
    channels = all_channels()
    backend = channels.get(channel)
    if backend is None:
        raise ValidationError({"channel": [f"Unknown channel {channel!r}. Known channels: {', '.join(sorted(channels))}."]})
    try:
        checked = backend.validate(Message(recipient=to, body=message, subject=subject, metadata=metadata or {}))
    except InvalidMessage as exc:
        raise ValidationError({exc.field: [exc.message]}) from None
    return store.NewNotification(
        id=new_notification_id(),
        channel=channel,
        recipient=checked.recipient,
        subject=checked.subject,
        message=checked.body,
        metadata=checked.metadata,
    )


def notification_create(**fields: Any) -> Notification:
    """Validate and accept one notification: the notification, its first history event and its
    outbox row are committed together, and nothing is sent here. Returns it (unsaved copy,
    built from what was written; no read-back query)."""
    new = notification_validate(**fields)
    (created_at,) = store.enqueue([new])
    return Notification(
        id=new.id, channel=new.channel, recipient=new.recipient, subject=new.subject,
        message=new.message, metadata=new.metadata or {}, status=Status.QUEUED, attempts=0,
        created_at=created_at, updated_at=created_at,
    )
