"""Receipts, suppressions and status events at the database: the statements of outbox/sql.py
and the status-event trigger, driven through outbox.store as the intake and the dispatchers
drive them. The end-to-end runs through real processes and provider stand-ins are in
tests/integration/notifications/test_receipts_*.py and test_status_webhooks.py."""

from __future__ import annotations

from channels.receipts import DELIVERED, INFO, UNDELIVERED, Receipt
from notifications.models import Notification, StatusEvent, Suppression, WebhookEndpoint
from outbox import store
from outbox.models import OutboxEntry
from tests.helpers import claim, enqueue_one, history, status_of, tenant

KINDS = {"fake": "fake", "email-log": "email"}


def sent(nid: str, provider_id: str) -> None:
    """Record `nid`'s send as a dispatcher does: claim, START, RECORD 'sent'."""
    (delivery,) = [d for d in claim(channels=("fake",), start=True) if d.notification_id == nid]
    assert store.record_outcomes([store.Outcome(delivery, "sent", provider_message_id=provider_id)], dispatcher="d1") == 1


def receipt(provider_id: str, outcome: str, status: str, **fields) -> Receipt:
    return Receipt(source="test", kind="fake", provider_message_id=provider_id, outcome=outcome,
                   provider_status=status, **fields)


def test_a_receipt_marks_the_notification_delivered_once_and_is_in_its_history(db):
    nid = enqueue_one("fake", "a@example.com", "hi")
    sent(nid, "P-1")
    assert store.record_receipts([receipt("P-1", DELIVERED, "delivered")], channel_kinds=KINDS) == (1, 1)
    assert status_of(nid) == "delivered"
    assert store.record_receipts([receipt("P-1", DELIVERED, "delivered")], channel_kinds=KINDS) == (0, 0)  # the same again
    notes = [e.note for e in history(nid)]
    assert notes.count("receipt from test: delivered") == 1
    assert [e.status for e in history(nid)] == ["queued", "sent", "delivered"]


def test_undelivered_wins_over_delivered_in_either_order(db):
    first = enqueue_one("fake", "a@example.com", "1")
    sent(first, "P-1")
    second = enqueue_one("fake", "b@example.com", "2")
    sent(second, "P-2")
    store.record_receipts([receipt("P-1", DELIVERED, "delivered")], channel_kinds=KINDS)
    store.record_receipts([receipt("P-1", UNDELIVERED, "bounced", error_code="550")], channel_kinds=KINDS)
    store.record_receipts([receipt("P-2", UNDELIVERED, "bounced", error_code="550")], channel_kinds=KINDS)
    store.record_receipts([receipt("P-2", DELIVERED, "delivered")], channel_kinds=KINDS)
    assert status_of(first) == status_of(second) == "undelivered"
    assert Notification.objects.get(pk=second).last_error == "550"


def test_a_receipt_before_the_send_is_recorded_waits_and_then_applies(db):
    nid = enqueue_one("fake", "a@example.com", "hi")
    assert store.record_receipts([receipt("P-early", DELIVERED, "delivered")], channel_kinds=KINDS) == (1, 0)
    assert store.apply_pending_receipts(channel_kinds=KINDS) == 0  # no notification has the id yet
    sent(nid, "P-early")
    assert status_of(nid) == "sent"
    assert store.apply_pending_receipts(channel_kinds=KINDS) == 1
    assert status_of(nid) == "delivered"
    assert store.apply_pending_receipts(channel_kinds=KINDS) == 0


def test_an_informational_receipt_changes_no_status_and_a_receipt_of_another_kind_matches_nothing(db):
    nid = enqueue_one("fake", "a@example.com", "hi")
    sent(nid, "P-1")
    assert store.record_receipts([receipt("P-1", INFO, "opened")], channel_kinds=KINDS) == (1, 1)
    assert status_of(nid) == "sent"
    other_kind = Receipt(source="test", kind="sms", provider_message_id="P-1", outcome=DELIVERED, provider_status="x")
    assert store.record_receipts([other_kind], channel_kinds=KINDS) == (1, 0)
    assert status_of(nid) == "sent"


def test_suppression_from_a_receipt_and_from_a_refused_send_and_the_next_notification_is_suppressed(db):
    nid = enqueue_one("fake", "gone@example.com", "hi", kind="fake")
    sent(nid, "P-1")
    store.record_receipts([receipt("P-1", UNDELIVERED, "bounced", suppress_reason="hard bounce")], channel_kinds=KINDS)
    entry = Suppression.objects.get()
    assert (entry.kind, entry.recipient, entry.reason, str(entry.notification_id)) == ("fake", "gone@example.com",
                                                                                     "hard bounce", nid)
    later = enqueue_one("fake", "gone@example.com", "again", kind="fake")
    assert status_of(later) == "suppressed"
    assert not OutboxEntry.objects.filter(notification_id=later).exists()
    assert "hard bounce" in history(later)[0].note
    anyway = enqueue_one("fake", "gone@example.com", "anyway", kind="fake", ignore_suppression=True)
    assert status_of(anyway) == "queued"

    refused = enqueue_one("fake", "stop@example.com", "hi", kind="fake")
    (delivery,) = [d for d in claim(channels=("fake",), start=True) if d.notification_id == refused]
    store.record_outcomes([store.Outcome(delivery, "failed", error="opted out", suppress_reason="opted out",
                                         kind="fake")], dispatcher="d1")
    assert Suppression.objects.filter(recipient="stop@example.com", reason="opted out").exists()


def test_status_events_are_numbered_per_notification_and_queued_for_subscribed_endpoints(db):
    client = tenant()
    WebhookEndpoint.objects.create(client=client, url="https://hooks.example.com/a", event_types=["sent", "delivered"],
                                   secret="whsec_x")
    nid = enqueue_one("fake", "a@example.com", "hi")
    sent(nid, "P-1")
    store.record_receipts([receipt("P-1", DELIVERED, "delivered")], channel_kinds=KINDS)
    events = list(StatusEvent.objects.filter(notification_id=nid).order_by("sequence"))
    assert [(e.sequence, e.type) for e in events] == [(1, "accepted"), (2, "sent"), (3, "delivered")]
    assert events[2].payload["notification"]["status"] == "delivered"
    assert events[2].payload["id"] == str(events[2].id)
    deliveries = Notification.objects.filter(client_id=0).order_by("created_at")
    assert [d.subject for d in deliveries] == ["sent", "delivered"]  # not "accepted": not subscribed
    assert {d.channel for d in deliveries} == {"status-webhooks"}
    assert deliveries[1].metadata["event_id"] == str(events[2].id)
    assert OutboxEntry.objects.filter(channel="status-webhooks").count() == 2
    # The deliveries make no events of their own.
    assert not StatusEvent.objects.filter(client_id=0).exists()


def test_a_client_without_a_webhook_endpoint_gets_no_status_events(db):
    nid = enqueue_one("fake", "a@example.com", "hi")
    sent(nid, "P-1")
    assert status_of(nid) == "sent"
    assert not StatusEvent.objects.exists()
    assert not Notification.objects.filter(client_id=0).exists()


def test_notifications_accepted_before_the_first_endpoint_report_nothing_later(db):
    before = enqueue_one("fake", "a@example.com", "before")
    WebhookEndpoint.objects.create(client=tenant(), url="https://hooks.example.com/a",
                                   event_types=list(WebhookEndpoint.EVENT_TYPES), secret="whsec_x")
    sent(before, "P-1")
    after = enqueue_one("fake", "b@example.com", "after")
    sent(after, "P-2")
    assert not StatusEvent.objects.filter(notification_id=before).exists()
    assert list(StatusEvent.objects.filter(notification_id=after).order_by("sequence").values_list("type", flat=True)) \
        == ["accepted", "sent"]


def test_a_late_receipt_about_an_earlier_send_of_a_resent_notification_is_history_only(db):
    nid = enqueue_one("fake", "a@example.com", "hi")
    sent(nid, "P-first")
    assert store.resend(notification_id=nid, client_id=tenant().pk, note="resent by test")[1]
    sent(nid, "P-second")
    assert store.record_receipts([receipt("P-first", UNDELIVERED, "bounced")], channel_kinds=KINDS) == (1, 1)
    assert status_of(nid) == "sent"  # the bounce was of the first send
    assert "about an earlier send" in history(nid)[-1].note
    store.record_receipts([receipt("P-second", DELIVERED, "delivered")], channel_kinds=KINDS)
    assert status_of(nid) == "delivered"
