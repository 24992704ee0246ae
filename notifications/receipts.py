"""The intake of delivery receipts: providers' callbacks about messages they accepted.

    POST /receipts/twilio/<channel>           Twilio status callbacks (signed, X-Twilio-Signature)
    POST /receipts/anymail/<esp>/tracking/    an ESP's tracking webhooks, through Anymail's views
                                              (HTTP basic auth: NOTIFY_ANYMAIL_WEBHOOK_SECRET)

A channel turns its provider's callback into `channels.receipts.Receipt`s and verifies it;
this module stores them (outbox.store.record_receipts), which applies each to its notification
by the provider's message id, and answers the provider:
- a callback that does not prove where it comes from: 403, nothing stored;
- one the provider's protocol does not allow: 400, nothing stored;
- anything else: 200, also for an id we do not know (counted, and kept a day in case its send
  is recorded later), so that no provider retries a receipt forever.
A database failure answers 500: the provider tries again later, and the receipt's identity
makes the retry harmless.
"""

from __future__ import annotations

import logging
from functools import wraps

from anymail import urls as anymail_urls
from anymail.exceptions import AnymailWebhookValidationFailure
from anymail.signals import tracking
from django.conf import settings
from django.db import transaction
from django.dispatch import receiver
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from channels.backends.email import receipt_from_anymail
from channels.receipts import ForgedReceipt, MalformedReceipt, Receipt
from channels.registry import all_channels, get_channel
from outbox import store

from . import metrics
from .api_errors import error_response

logger = logging.getLogger("notifications.receipts")


def record(receipts: list[Receipt]) -> None:
    """Store receipts and apply them; count what became of them."""
    new, applied = store.record_receipts(receipts, channel_kinds={name: c.kind for name, c in all_channels().items()})
    source = receipts[0].source
    metrics.count_receipts(source, "duplicate", len(receipts) - new)
    metrics.count_receipts(source, "applied", applied)
    metrics.count_receipts(source, "pending", new - applied)
    if new > applied:
        logger.info("receipts from %s: %d of %d match no notification yet (unknown ids, or sends not recorded yet)",
                    source, new - applied, new)


# --- Twilio ---------------------------------------------------------------------------------------


@csrf_exempt
@require_POST
def twilio_status_callback(request, channel: str):
    """A Twilio status callback for a message sent through `channel`."""
    backend = get_channel(channel)
    if backend is None or not hasattr(backend, "receipts_from_callback"):
        return error_response("not_found", f"No channel {channel!r} takes Twilio status callbacks.", 404)
    source = f"twilio:{channel}"
    try:
        receipts = backend.receipts_from_callback(url=request.build_absolute_uri(), params=request.POST,
                                                  headers=request.headers)
    except ForgedReceipt as exc:
        metrics.count_receipts(source, "forged")
        logger.warning("receipt refused: %s", exc)
        return error_response("forbidden", "The request is not signed by Twilio for this channel.", 403)
    except MalformedReceipt as exc:
        metrics.count_receipts(source, "malformed")
        return error_response("invalid", str(exc), 400)
    record(receipts)
    return HttpResponse(status=200)


# --- Anymail (any ESP) -----------------------------------------------------------------------------


@receiver(tracking, dispatch_uid="notifications.receipts.anymail")
def anymail_tracking_event(sender, event, esp_name: str, **kwargs) -> None:
    """Anymail's normalised event, from the tracking view of the ESP that posted it."""
    record([receipt_from_anymail(event, esp_name)])


def _anymail_view(view):
    """Anymail's tracking view, refused without a webhook secret (anyone could post a bounce
    and suppress a recipient), with its refusals and parse failures answered as 4xx."""
    source = f"anymail:{view.view_class.esp_name}"  # as the tracking signal's receipts say

    @wraps(view)
    def guarded(request, *args, **kwargs):
        if not settings.ANYMAIL.get("WEBHOOK_SECRET"):
            return error_response("forbidden", "ESP receipts are off: set NOTIFY_ANYMAIL_WEBHOOK_SECRET "
                                               "and give the ESP that user:password in the webhook URL.", 403)
        try:
            with transaction.atomic():  # every event of the request, or none
                return view(request, *args, **kwargs)
        except AnymailWebhookValidationFailure:
            metrics.count_receipts(source, "forged")
            return error_response("forbidden", "Missing or wrong basic auth for the ESP's webhook.", 403)
        except (MalformedReceipt, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Not what the ESP posts (a body that is not its JSON, an event without a message id).
            metrics.count_receipts(source, "malformed")
            return error_response("invalid", f"Not a tracking event this ESP sends: {type(exc).__name__}", 400)

    return csrf_exempt(guarded)


urlpatterns = [
    path("twilio/<str:channel>", twilio_status_callback, name="receipts-twilio"),
    *(path(f"anymail/{pattern.pattern}", _anymail_view(pattern.callback), name=f"receipts-{pattern.name}")
      for pattern in anymail_urls.urlpatterns if pattern.name and pattern.name.endswith("_tracking_webhook")),
]
