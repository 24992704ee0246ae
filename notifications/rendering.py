"""A notification as its channel sends it: what the admin's detail page shows as the
"rendered message". Plain text, escaped by the caller (the admin puts it in a <pre>).

Each kind of channel sends different parts of a notification: email a From/To/Subject and a
plain-text body; SMS and Slack the body alone (the subject is not sent); a webhook a JSON body.
A channel that is not configured in this process is shown generically.
"""

from __future__ import annotations

import json

from channels.backends.email import EmailChannel
from channels.backends.webhook import WebhookChannel
from channels.registry import all_channels

from .models import Notification


def rendered_message(notification: Notification) -> tuple[str, str]:
    """(headline, text): which channel and how it sends, and the message as sent."""
    try:
        channel = all_channels().get(notification.channel)
    except Exception as exc:  # noqa: BLE001 - a broken channels file must not break the admin page
        channel, problem = None, f"channels not available: {exc}"
    else:
        problem = f"channel {notification.channel!r} is not configured in this process"
    metadata = notification.metadata if isinstance(notification.metadata, dict) else {}
    subject, body, to = notification.subject, notification.message, notification.recipient

    if channel is None:
        return f"{problem}; its fields as stored", _lines(("To", to), ("Subject", subject)) + "\n\n" + body

    backend = f"{type(channel).__module__}.{type(channel).__qualname__}"
    if isinstance(channel, EmailChannel):
        sender = channel.from_email
        if channel.allow_from_override and isinstance(metadata.get("from_email"), str):
            sender = metadata["from_email"]
        headers = _lines(("From", sender), ("To", to), ("Subject", subject or "(none)"),
                         ("Content-Type", "text/plain; charset=utf-8"), ("X-Notify-Notification-Id", str(notification.id)))
        return f"email through {notification.channel} ({channel.backend_path})", f"{headers}\n\n{body}"
    if isinstance(channel, WebhookChannel):
        payload = {
            "id": str(notification.id), "to": to, "subject": subject, "message": body, "metadata": metadata,
            "attempt": max(notification.attempts, 1), "sent_at": "(the time of the send)",
        }
        return (f"JSON POSTed by {notification.channel} to target {to!r}, signed (X-Notify-Signature); "
                "attempt and sent_at are those of each send",
                json.dumps(payload, ensure_ascii=False, indent=2))
    kind = getattr(channel, "kind", "generic")
    if kind in ("sms", "slack"):
        what = "SMS" if kind == "sms" else "Slack message"
        note = " (the subject is not sent)" if subject else ""
        return f"{what} through {notification.channel} ({backend}){note}", _lines(("To", to)) + "\n\n" + body
    # Log, fake and other channels: the recipient, the subject if any, the body.
    return f"{notification.channel} ({backend})", _lines(("To", to), ("Subject", subject)) + "\n\n" + body


def _lines(*pairs: tuple[str, str]) -> str:
    """Header-like lines; an empty subject is left out."""
    return "\n".join(f"{name}: {value}" for name, value in pairs if value or name != "Subject")

