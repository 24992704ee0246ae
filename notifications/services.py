"""Writes of the notifications domain, shared by the API and the admin.

Validation (notification_validate, called by the request serializers) happens before any
write; the writes themselves are single statements of outbox/sql.py (several in one
transaction only with an Idempotency-Key).

What a service refuses, it raises as a domain error of notifications.errors (never an HTTP
answer): notifications.api_errors answers them for the API, the admin shows their message.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Sequence

from django.conf import settings
from django.db import transaction

from channels.base import Channel, Message
from channels.errors import InvalidMessage
from channels.registry import STATUS_WEBHOOKS_CHANNEL, all_channels
from outbox import store

from . import metrics, template_store
from .errors import IdempotencyKeyReused, InvalidNotification, NotificationNotFound, StatusConflict
from .ids import new_notification_id
from .models import ApiClient, Notification, Status


def channel_get(*, name: str) -> Channel:
    """The configured channel called `name`.

    Raises InvalidNotification (field "channel", listing the known channels) if there is none.
    The one check of a notification's channel: notification_validate relies on it, and the
    request serializer calls it while checking the fields, so that an unknown channel is
    reported together with the other fields' errors.
    """
    channels = all_channels()
    backend = channels.get(name) if name != STATUS_WEBHOOKS_CHANNEL else None
    if backend is None:
        known = sorted(set(channels) - {STATUS_WEBHOOKS_CHANNEL})  # that one takes no notifications
        raise InvalidNotification("channel", f"Unknown channel {name!r}. Known channels: {', '.join(known)}.")
    return backend


def notification_validate(*, channel: str, to: str, message: str = "", subject: str = "",
                          metadata: dict | None = None, priority: int = 1, send_at=None,
                          expires_at=None, ignore_suppression: bool = False, template: str | None = None,
                          template_version: int | None = None, locale: str | None = None,
                          data: dict | None = None, client_id: int | None = None,
                          rendering: template_store.RequestRendering | None = None) -> store.NewNotification:
    """Check a notification against its channel; return it normalised, ready to enqueue
    (to a recipient on the client's suppression list, it will be `suppressed` unless
    `ignore_suppression`).

    With a `template` (of client `client_id`), its subject, text and HTML are rendered here,
    for this channel, with `data`, and stored as they are (with the template's name and
    version); `rendering`, if given, is the request's (its versions found once, one CPU budget).

    Raises InvalidNotification naming the field: an unknown channel (see channel_get), or a
    recipient or content the channel refuses.
    """
    backend = channel_get(name=channel)
    html, version = "", None
    if template is not None:
        version = _template_version(client_id, template, template_version, rendering)
        rendered = template_store.render_for(version, channel=backend, locale=locale, data=data or {},
                                             rendering=rendering)
        subject, message, html, locale = rendered.subject, rendered.text, rendered.html, rendered.locale
    try:
        checked = backend.validate(Message(recipient=to, body=message, subject=subject, metadata=metadata or {},
                                           html=html))
    except InvalidMessage as exc:
        if version is not None and exc.field in ("message", "subject"):
            raise InvalidNotification("template", f"template {template!r} v{version.version} rendered for channel "
                                                  f"{channel!r}: {exc.field}: {exc.message}") from None
        raise InvalidNotification(exc.field, exc.message) from None
    return store.NewNotification(
        id=new_notification_id(), channel=channel, recipient=checked.recipient, subject=checked.subject,
        message=checked.body, metadata=checked.metadata, priority=priority, send_at=send_at,
        expires_at=expires_at, kind=backend.kind, ignore_suppression=ignore_suppression, html=html,
        template=template or "", template_version=version.version if version else None,
        locale=(locale or "") if version else "",
    )


def _template_version(client_id: int | None, name: str, version: int | None,
                      rendering: template_store.RequestRendering | None):
    """The template version to render (one query; once per request with `rendering`)."""
    if client_id is None:
        raise InvalidNotification("template", "Templates need an API client.")
    key = (name, version)
    cache = rendering.versions if rendering is not None else None
    if cache is not None and key in cache:
        return cache[key]
    try:
        found = template_store.template_version_get(client_id=client_id, name=name, version=version, cached=True)
    except template_store.TemplateNotFound as exc:
        raise InvalidNotification("template", exc.message) from None
    if cache is not None:
        cache[key] = found
    return found


def request_fingerprint(endpoint: str, body: Any) -> str:
    """What makes two requests "the same" for an Idempotency-Key: endpoint and JSON body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(f"{endpoint}\n{canonical}".encode()).hexdigest()


def notifications_create(*, client: ApiClient, notifications: Sequence[store.NewNotification],
                         idempotency_key: str | None = None, fingerprint: str = "",
                         rate: store.RateLimit | None = None) -> tuple[list[store.Enqueued], bool]:
    """Accept validated notifications (see notification_validate), all or nothing: each one's
    row, first history event and outbox row are committed together; nothing is sent here.

    With a `rate` (notifications.throttling), they count as their number against the client's
    fleet-wide limit, in the statement that writes them: over it, nothing is written and
    RateLimited is raised; a batch larger than the whole limit is InvalidNotification.

    Returns what was written, in order, and False; or, with an idempotency key, for a repeat
    of an earlier request (same key, same fingerprint): nothing is written, and the earlier
    request's notifications are returned as they are now, with True. Raises
    IdempotencyKeyReused for the same key with another fingerprint.
    """
    if rate is not None and len(notifications) > 1 and len(notifications) > rate.limit:
        # It could never be accepted: a 429 would have the client retry it forever.
        raise InvalidNotification("notifications", f"{len(notifications)} notifications in one batch, but the rate "
                                                   f"limit allows {rate.limit} per {rate.period} s; split it.")
    if idempotency_key is None:
        written = store.enqueue(notifications, client_id=client.pk, rate=rate)
        metrics.count_accepted(n.channel for n in notifications)
        return written, False

    with transaction.atomic():
        earlier = store.take_idempotency_key(
            client_id=client.pk, key=idempotency_key, request_hash=fingerprint,
            notification_ids=[n.id for n in notifications], ttl_seconds=settings.NOTIFY_IDEMPOTENCY_TTL_SECONDS,
        )
        if earlier is None:  # RateLimited rolls the key back with the rest
            written = store.enqueue(notifications, client_id=client.pk, rate=rate)
    if earlier is None:  # committed; a replay (below) writes nothing and is not counted
        metrics.count_accepted(n.channel for n in notifications)
        return written, False
    request_hash, ids = earlier
    if request_hash != fingerprint:
        raise IdempotencyKeyReused()
    found = {row[0]: store.Enqueued(*row) for row in
             Notification.objects.filter(id__in=ids).values_list("id", "status", "created_at")}
    return [found[i] for i in ids if i in found], True


def as_notification(new: store.NewNotification, written: store.Enqueued, client: ApiClient) -> Notification:
    """The notification as just written, without reading it back."""
    return Notification(
        id=new.id, client=client, channel=new.channel, recipient=new.recipient, subject=new.subject,
        message=new.message, metadata=new.metadata or {}, status=written.status, attempts=0,
        last_error=written.last_error, html=new.html, template=new.template,
        template_version=new.template_version, locale=new.locale,
        priority=new.priority, send_at=new.send_at, expires_at=new.expires_at,
        created_at=written.created_at, updated_at=written.created_at,
    )


def notification_cancel(*, notification_id: uuid.UUID, client_id: int, by: str) -> None:
    """Cancel a notification whose send has not started (also while a dispatcher holds it).

    Raises NotificationNotFound (no such notification for this client) or StatusConflict
    (not in Status.cancellable(): already sending, sent, failed, cancelled or expired)."""
    status_before, cancelled = store.cancel(notification_id=notification_id, client_id=client_id, note=f"cancelled by {by}")
    if status_before is None:
        raise NotificationNotFound(notification_id)
    if not cancelled:
        if status_before in Status.cancellable():  # its send started meanwhile
            status_before = Status.SENDING
        raise StatusConflict(
            notification_id, status_before,
            f"Notification {notification_id} is {status_before}; only "
            f"{', '.join(Status.cancellable())} notifications can be cancelled.",
        )


def notification_resend(*, notification_id: uuid.UUID, client_id: int, by: str) -> None:
    """Queue a sent or failed notification again; its history keeps every earlier attempt.

    Raises NotificationNotFound or StatusConflict (not in Status.resendable())."""
    status_before, resent = store.resend(notification_id=notification_id, client_id=client_id, note=f"resent by {by}")
    if status_before is None:
        raise NotificationNotFound(notification_id)
    if not resent:
        raise StatusConflict(
            notification_id, status_before,
            f"Notification {notification_id} is {status_before}; only "
            f"{_one_of(Status.resendable())} notifications can be resent.",
        )


def _one_of(words: list[str]) -> str:
    """"a, b or c"."""
    return " or ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else ""
