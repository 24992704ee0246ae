"""Brevo's delivery receipts end to end, through real processes: the API under gunicorn takes
Brevo's transactional webhooks at /receipts/anymail/brevo/tracking/ (Anymail's view, HTTP
basic auth from NOTIFY_ANYMAIL_WEBHOOK_SECRET), a dispatcher process sends through the Brevo
stand-in (tests/provider_standins/email.py), and the stand-in reports on what it accepted as
Brevo does: one JSON event per POST, matched to the notification by Brevo's message id.

What a receipt does (channels/backends/email.py, receipt_from_anymail; outbox/sql.py,
APPLY_RECEIPTS): delivered -> delivered; a hard bounce -> undelivered and the recipient
suppressed; a complaint or an unsubscribe -> suppressed, status unchanged; a soft bounce, an
open, a click -> history only. A post without the secret changes nothing (403)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifications.auth import api_key_create
from notifications.models import Notification, Receipt, Suppression
from outbox.models import OutboxEntry
from tests.helpers import ApiProcess, history, http_get, status_of, tenant, wait_for_status, wait_until
from tests.provider_standins.email import BREVO_BACKEND, BREVO_KEY, SMTP_BACKEND, BrevoStandIn, brevo_event

HOOK_USER, HOOK_PASSWORD = "brevo-hooks", "hook-secret-0123456789"
TRACKING_PATH = "/receipts/anymail/brevo/tracking/"
SOURCE = "anymail:Brevo"

CHANNELS_TOML = """
[channels.email]
backend = "channels.backends.email.EmailChannel"
[channels.email.options]
backend = "{brevo_backend}"
from_email = "notify@example.com"
timeout = 5
connection = {{ api_key = "${{TEST_BREVO_API_KEY}}", api_url = "{brevo_url}/v3/" }}

[channels.email-local]
backend = "channels.backends.email.EmailChannel"
[channels.email-local.options]
backend = "{smtp_backend}"
from_email = "notify@example.com"
connection = {{ host = "127.0.0.1", port = 1 }}
"""


@dataclass
class Service:
    """The API (gunicorn) and, with a secret, a dispatcher, configured with the Brevo channel
    "email" and the SMTP channel "email-local"."""

    api: ApiProcess
    key: str

    def notify(self, to: str, channel: str = "email", **fields) -> dict:
        """POST a notification; its 202 body."""
        status, _, body = self.api.request("POST", "/api/v1/notifications",
                                           {"channel": channel, "to": to, "subject": "Hi", "message": "Hello", **fields},
                                           headers={"Authorization": f"Bearer {self.key}"})
        assert status == 202, body
        return body

    def get(self, path: str) -> dict:
        status, _, body = self.api.request("GET", path, headers={"Authorization": f"Bearer {self.key}"})
        assert status == 200, body
        return body

    @property
    def tracking_url(self) -> str:
        return f"{self.api.url}{TRACKING_PATH}"


@pytest.fixture
def start_service(start_api, start_dispatchers, channels_file, brevo: BrevoStandIn):
    """Start the service, and point the stand-in's webhooks at it with the secret. With
    `secret`, the API has NOTIFY_ANYMAIL_WEBHOOK_SECRET and a dispatcher runs; without, the
    API alone, with none."""

    def start(*, secret: bool = True) -> Service:
        path = channels_file(CHANNELS_TOML.format(brevo_backend=BREVO_BACKEND, brevo_url=brevo.url,
                                                  smtp_backend=SMTP_BACKEND))
        env = {"NOTIFY_CHANNELS_FILE": str(path), "TEST_BREVO_API_KEY": BREVO_KEY,
               "NOTIFY_ANYMAIL_WEBHOOK_SECRET": f"{HOOK_USER}:{HOOK_PASSWORD}" if secret else ""}
        api = start_api(env=env, workers=2)
        if secret:
            start_dispatchers("--processes", "1", "--threads", "4", channels_file=path, env=env)
        brevo.post_events_to(f"{api.url}{TRACKING_PATH}", (HOOK_USER, HOOK_PASSWORD))
        return Service(api, api_key_create(client=tenant())[1])

    return start


def receipt_notes(nid: str) -> list[str]:
    """The receipt entries of a notification's history, without their times."""
    return [re.sub(r" at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "", e.note)
            for e in history(nid) if e.note.startswith("receipt from")]


def wait_for_notes(nid: str, count: int) -> list[str]:
    return wait_until(lambda: len(notes := receipt_notes(nid)) >= count and notes, timeout=15,
                      message=f"{count} receipt(s) in the history of {nid}")


def receipts_metric(api: ApiProcess) -> dict[tuple[str, str], float]:
    """notifications_receipts_total of the API's workers, by (source, result)."""
    return {(s.labels["source"], s.labels["result"]): s.value
            for family in text_string_to_metric_families(http_get(f"{api.url}/metrics"))
            for s in family.samples if s.name == "notifications_receipts_total"}


def test_brevo_events_set_the_status_and_the_suppression_list(start_service, brevo: BrevoStandIn):
    service = start_service()
    scripts = {
        "delivered@example.com": ["delivered"],
        "bounced@example.com": [{"event": "hard_bounce", "reason": "550 5.1.1 <bounced@example.com>: user unknown"}],
        "full@example.com": ["soft_bounce"],
        "annoyed@example.com": ["spam"],
        "leaving@example.com": ["unsubscribe"],
        "reader@example.com": ["opened", "click"],
    }
    for to, events in scripts.items():
        brevo.script_events(to, *events)
    ids = {to: service.notify(to)["id"] for to in scripts}

    wait_for_status(ids["delivered@example.com"], "delivered", "the delivered event applied")
    wait_for_status(ids["bounced@example.com"], "undelivered", "the hard bounce applied")
    for to in ("full@example.com", "annoyed@example.com", "leaving@example.com"):
        wait_for_notes(ids[to], 1)
    wait_for_notes(ids["reader@example.com"], 2)
    wait_until(lambda: len(brevo.posted) == 7, timeout=5, message="the stand-in's 7 posts answered")
    assert all(post.status == 200 for post in brevo.posted), brevo.posted

    # Each event is one history entry, in Brevo's words as Anymail reads them.
    assert receipt_notes(ids["delivered@example.com"]) == [f"receipt from {SOURCE}: delivered"]
    assert receipt_notes(ids["bounced@example.com"]) == [
        f"receipt from {SOURCE}: bounced (hard_bounce); recipient added to the suppression list"]
    assert receipt_notes(ids["full@example.com"]) == [f"receipt from {SOURCE}: bounced (soft_bounce)"]
    assert receipt_notes(ids["annoyed@example.com"]) == [
        f"receipt from {SOURCE}: complained (spam); recipient added to the suppression list"]
    assert receipt_notes(ids["leaving@example.com"]) == [
        f"receipt from {SOURCE}: unsubscribed (unsubscribe); recipient added to the suppression list"]
    assert receipt_notes(ids["reader@example.com"]) == [f"receipt from {SOURCE}: opened",
                                                        f"receipt from {SOURCE}: clicked (click)"]
    bounced = Notification.objects.get(pk=ids["bounced@example.com"])
    assert bounced.last_error == "bounced: 550 5.1.1 <bounced@example.com>: user unknown"
    # A soft bounce (Brevo tries again), a complaint, an unsubscribe, opens and clicks leave
    # the status as it was.
    for to in ("full@example.com", "annoyed@example.com", "leaving@example.com", "reader@example.com"):
        assert status_of(ids[to]) == "sent", to

    # The suppression list: the hard bounce, the complaint and the unsubscribe, nothing else.
    listed = service.get("/api/v1/suppressions")["results"]
    assert sorted((s["kind"], s["to"], s["notification_id"]) for s in listed) == sorted(
        ("email", to, ids[to]) for to in ("bounced@example.com", "annoyed@example.com", "leaving@example.com"))
    reasons = {s["to"]: s["reason"] for s in listed}
    assert reasons["bounced@example.com"].startswith("Brevo: hard bounce (550 5.1.1")
    assert reasons["annoyed@example.com"] == "Brevo: complaint (marked as spam)"
    assert reasons["leaving@example.com"] == "Brevo: unsubscribed"

    # A later notification to a suppressed address is never sent; with ignore_suppression it is.
    later = service.notify("bounced@example.com")
    assert later["status"] == "suppressed"
    assert not OutboxEntry.objects.filter(notification_id=later["id"]).exists()
    anyway = service.notify("bounced@example.com", ignore_suppression=True)
    assert anyway["status"] == "queued"
    wait_for_status(anyway["id"], "sent", "the notification that ignores the suppression sent")
    assert brevo.seen["bounced@example.com"] == 2  # the first one and `anyway`, not `later`
    assert status_of(later["id"]) == "suppressed"
    assert "on the suppression list for email" in history(later["id"])[0].note

    metric = receipts_metric(service.api)
    assert metric[(SOURCE, "applied")] + metric.get((SOURCE, "pending"), 0) == 7


def test_duplicates_unknown_ids_and_refused_posts(start_service, brevo: BrevoStandIn):
    service = start_service()
    nid = service.notify("once@example.com")["id"]
    wait_for_status(nid, "sent", "sent through the stand-in")
    (message_id,) = brevo.message_ids["once@example.com"]
    assert Notification.objects.get(pk=nid).provider_message_id == message_id

    # The same event twice: both answered 200, one history entry.
    delivered = brevo_event("delivered", email="once@example.com", message_id=message_id, subject="Hi")
    assert [brevo.post_event(delivered).status for _ in range(2)] == [200, 200]
    assert status_of(nid) == "delivered"
    assert receipt_notes(nid) == [f"receipt from {SOURCE}: delivered"]
    (stored,) = Receipt.objects.all()
    assert stored.occurred_at.timestamp() == delivered["ts_epoch"] / 1000  # Brevo's UTC time, in ms

    # Posts without the secret, or with a wrong one, change nothing: a forged hard bounce
    # neither fails the notification nor suppresses its recipient.
    bounce = brevo_event("hard_bounce", email="once@example.com", message_id=message_id)
    for auth in (None, (HOOK_USER, "wrong"), ("someone", HOOK_PASSWORD)):
        refused = brevo.post_event(bounce, auth=auth)
        assert refused.status == 403, refused
    # Not Brevo's JSON, or an event without a message id: 400, nothing stored.
    assert brevo.post_event(b"{not json").status == 400
    assert brevo.post_event(b'["delivered"]').status == 400
    assert brevo.post_event(brevo_event("delivered", email="once@example.com", message_id=None)).status == 400
    assert status_of(nid) == "delivered"
    assert receipt_notes(nid) == [f"receipt from {SOURCE}: delivered"]
    assert Receipt.objects.count() == 1 and not Suppression.objects.exists()

    # An id that is no message of ours: 200 (Brevo must not retry it), kept unapplied.
    unknown = brevo.post_event(brevo_event("delivered", email="stranger@example.com", message_id="<nope@mailin.fr>"))
    assert unknown.status == 200
    assert Receipt.objects.get(provider_message_id="<nope@mailin.fr>").notification_id is None
    assert status_of(nid) == "delivered"

    metric = receipts_metric(service.api)
    assert metric[(SOURCE, "applied")] == 1
    assert metric[(SOURCE, "duplicate")] == 1
    assert metric[(SOURCE, "pending")] == 1
    assert metric[(SOURCE, "forged")] == 3
    assert metric[(SOURCE, "malformed")] == 3


def test_without_a_secret_receipts_are_refused_and_channels_show_their_receipts_url(start_service,
                                                                                    brevo: BrevoStandIn):
    service = start_service(secret=False)
    channels = {c["name"]: c for c in service.get("/api/v1/channels")["channels"]}
    assert channels["email"]["receipts_url"] == service.tracking_url
    assert channels["email-local"]["receipts_url"] is None  # SMTP: no receipts

    refused = brevo.post_event(brevo_event("delivered", email="a@example.com", message_id="<m@mailin.fr>"))
    assert refused.status == 403
    assert b"NOTIFY_ANYMAIL_WEBHOOK_SECRET" in refused.body
    assert not Receipt.objects.exists()
