"""The suppression list through the API (notifications/suppression_views.py) and the admin:
a client lists its own entries, newest first, filtered and in cursor pages, and deletes one
to send to that recipient again, however it writes the recipient (URL-encoded, unformatted:
normalised as a channel of that kind stores it). Django's test client, real database; the
entries are added here as the delivery side adds them (tests/integration/outbox/
test_receipts_store.py and test_receipts_*.py cover how they come)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from rest_framework.test import APIClient

from notifications.models import Receipt, Suppression
from tests.api_helpers import URL, assert_error
from tests.helpers import make_api_client, tenant

SUPPRESSIONS = "/api/v1/suppressions"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def suppress(kind: str, recipient: str, *, client: str = "tests", minutes: int = 0,
             reason: str = "hard bounce", notification_id=None) -> Suppression:
    """An entry of `client`'s list, created `minutes` after T0."""
    return Suppression.objects.create(client=tenant(client), kind=kind, recipient=recipient, reason=reason,
                                      notification_id=notification_id, created_at=T0 + timedelta(minutes=minutes))


def listed(response) -> list[tuple[str, str]]:
    assert response.status_code == 200, response.content
    return [(item["kind"], item["to"]) for item in response.json()["results"]]


@pytest.fixture
def entries(db) -> list[tuple[str, str]]:
    """Five entries of the client "tests" (newest first, as listed) and one of another client."""
    created = [
        suppress("email", "old@example.com", minutes=0),
        suppress("sms", "+14155550100", minutes=1, reason="Twilio error 21610: Attempt to send to unsubscribed recipient"),
        suppress("slack", "#alerts", minutes=2, reason="Slack: channel_not_found"),
        suppress("email", "alice+news@example.com", minutes=3, reason="Brevo: unsubscribed"),
        suppress("email", "new@example.com", minutes=4, notification_id="0193a1b2-0000-7000-8000-000000000001"),
    ]
    suppress("email", "theirs@example.com", client="someone-else", minutes=5)
    return [(entry.kind, entry.recipient) for entry in reversed(created)]


# --- listing -------------------------------------------------------------------------------------


def test_a_client_lists_its_own_entries_newest_first(api_client, entries):
    response = api_client.get(SUPPRESSIONS)
    assert listed(response) == entries  # not the other client's
    newest = response.json()["results"][0]
    assert newest == {"kind": "email", "to": "new@example.com", "reason": "hard bounce",
                      "notification_id": "0193a1b2-0000-7000-8000-000000000001",
                      "created_at": "2026-11-01T12:04:00Z"}
    assert response.json()["results"][-1]["notification_id"] is None  # added by hand
    assert api_client.get(f"{SUPPRESSIONS}/").status_code == 200  # with a trailing slash too


def test_filters_by_kind_and_recipient(api_client, entries):
    assert listed(api_client.get(SUPPRESSIONS, {"kind": "email"})) == [
        ("email", "new@example.com"), ("email", "alice+news@example.com"), ("email", "old@example.com")]
    assert listed(api_client.get(SUPPRESSIONS, {"kind": "sms"})) == [("sms", "+14155550100")]
    assert listed(api_client.get(SUPPRESSIONS, {"to": "alice+news@example.com"})) == [("email", "alice+news@example.com")]
    assert listed(api_client.get(SUPPRESSIONS, {"kind": "slack", "to": "#alerts"})) == [("slack", "#alerts")]
    assert listed(api_client.get(SUPPRESSIONS, {"kind": "sms", "to": "#alerts"})) == []
    assert listed(api_client.get(SUPPRESSIONS, {"to": "theirs@example.com"})) == []  # another client's
    assert_error(api_client.get(SUPPRESSIONS, {"recipient": "x"}), 400, fields=["recipient"])


def test_cursor_pages_cover_every_entry_once(api_client, entries):
    seen, pages = [], 0
    response = api_client.get(SUPPRESSIONS, {"page_size": 2})
    while True:
        pages += 1
        seen += listed(response)
        if response.json()["next"] is None:
            break
        response = api_client.get(response.json()["next"])
    assert (pages, seen) == (3, entries)
    back = api_client.get(api_client.get(SUPPRESSIONS, {"page_size": 2}).json()["next"]).json()["previous"]
    assert listed(api_client.get(back)) == entries[:2]
    assert_error(api_client.get(SUPPRESSIONS, {"page_size": 501}), 400, fields=["page_size"])
    assert_error(api_client.get(SUPPRESSIONS, {"cursor": "not-a-cursor"}), 400, fields=["cursor"])


# --- deleting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "stored", "in_url"), [
    ("email", "alice+news@example.com", "alice%2Bnews%40example.com"),  # '+' encoded, not a space
    ("email", "alice+news@example.com", "alice+news@example.com"),  # '+' as is: a path keeps it
    ("slack", "#alerts", "%23alerts"),  # '#' would start the fragment
    ("sms", "+14155550100", "%2B1%20(415)%20555-0100"),  # unformatted: E.164 through sms-log
    ("sms", "+14155550100", "+1-415-555-0100"),
])
def test_delete_finds_the_entry_however_the_recipient_is_written(api_client, entries, kind, stored, in_url):
    response = api_client.delete(f"{SUPPRESSIONS}/{kind}/{in_url}")
    assert response.status_code == 204, response.content
    assert response.content == b""
    assert not Suppression.objects.filter(kind=kind, recipient=stored).exists()
    assert listed(api_client.get(SUPPRESSIONS)) == [entry for entry in entries if entry != (kind, stored)]
    assert_error(api_client.delete(f"{SUPPRESSIONS}/{kind}/{in_url}"), 404, "not_found")  # gone already


def test_delete_answers_404_for_an_unknown_entry_and_for_another_clients(api_client, entries):
    assert_error(api_client.delete(f"{SUPPRESSIONS}/email/nobody%40example.com"), 404, "not_found")
    assert_error(api_client.delete(f"{SUPPRESSIONS}/sms/old%40example.com"), 404, "not_found")  # another kind
    assert_error(api_client.delete(f"{SUPPRESSIONS}/email/theirs%40example.com"), 404, "not_found")
    assert Suppression.objects.filter(recipient="theirs@example.com").exists()
    assert Suppression.objects.count() == 6


def test_without_a_key_the_list_is_not_shown_and_nothing_is_deleted(db, entries):
    anonymous = APIClient()
    assert_error(anonymous.get(SUPPRESSIONS), 401)
    assert_error(anonymous.delete(f"{SUPPRESSIONS}/email/old%40example.com"), 401)
    wrong = APIClient()
    wrong.credentials(HTTP_AUTHORIZATION="Bearer ntf_" + "x" * 32)
    assert_error(wrong.delete(f"{SUPPRESSIONS}/email/old%40example.com"), 401)
    assert Suppression.objects.count() == 6


def test_a_deleted_suppression_lets_the_next_notification_be_queued(api_client):
    suppress("email", "back@example.com", reason="Brevo: hard bounce")
    suppress("sms", "+14155550100", reason="Twilio error 21610")

    def notify(channel: str, to: str) -> dict:
        response = api_client.post(URL, {"channel": channel, "to": to, "message": "hello"}, format="json")
        assert response.status_code == 202, response.content
        return response.json()

    blocked = notify("email-log", "back@example.com")
    assert blocked["status"] == "suppressed"
    assert notify("sms-log", "+1 415 555 0100")["status"] == "suppressed"  # normalised before the check

    assert api_client.delete(f"{SUPPRESSIONS}/email/back%40example.com").status_code == 204
    assert api_client.delete(f"{SUPPRESSIONS}/sms/%2B1%20415%20555%200100").status_code == 204
    assert notify("email-log", "back@example.com")["status"] == "queued"
    assert notify("sms-log", "+1 415 555 0100")["status"] == "queued"
    assert api_client.get(f"{URL}/{blocked['id']}").json()["status"] == "suppressed"  # the earlier one stays


def test_a_client_can_delete_only_through_its_own_key(db):
    suppress("email", "shared@example.com", client="tests")
    suppress("email", "shared@example.com", client="someone-else")
    assert make_api_client("someone-else").delete(f"{SUPPRESSIONS}/email/shared%40example.com").status_code == 204
    assert [s.client.name for s in Suppression.objects.all()] == ["tests"]


# --- the admin -----------------------------------------------------------------------------------


def test_admin_lists_suppressions_and_receipts(admin_client, entries):
    Receipt.objects.create(source="anymail:Brevo", kind="email", provider_message_id="<abc123@smtp-relay.mailin.fr>",
                           outcome="undelivered", provider_status="bounced (hard_bounce)", error_code="bounced",
                           detail="550 5.1.1 user unknown", suppress_reason="Brevo: hard bounce", dedupe_key="k" * 64)
    suppressions = admin_client.get("/admin/notifications/suppression/")
    assert suppressions.status_code == 200
    page = suppressions.content.decode()
    for recipient in ("new@example.com", "alice+news@example.com", "#alerts", "+14155550100", "theirs@example.com"):
        assert recipient in page, recipient
    assert admin_client.get("/admin/notifications/suppression/", {"kind": "sms"}).content.decode().count(
        "+14155550100") >= 1
    entry = Suppression.objects.get(recipient="new@example.com")
    assert admin_client.get(f"/admin/notifications/suppression/{entry.pk}/change/").status_code == 200

    receipts = admin_client.get("/admin/notifications/receipt/")
    assert receipts.status_code == 200
    assert "&lt;abc123@smtp-relay.mailin.fr&gt;" in receipts.content.decode()
    assert "bounced (hard_bounce)" in receipts.content.decode()
    receipt = Receipt.objects.get()
    assert admin_client.get(f"/admin/notifications/receipt/{receipt.pk}/change/").status_code == 200
    assert admin_client.get("/admin/notifications/receipt/add/").status_code == 403  # receipts are as they came


def test_the_to_filter_finds_a_phone_number_however_it_is_written(db):
    api = make_api_client("filters-phone")
    Suppression.objects.create(client=tenant("filters-phone"), kind="sms", recipient="+14155550100", reason="STOP")
    found = api.get(SUPPRESSIONS, {"to": "+1 (415) 555-0100"}).json()["results"]
    assert [entry["to"] for entry in found] == ["+14155550100"]
    assert api.get(SUPPRESSIONS, {"to": "+1 (415) 555-0100", "kind": "email"}).json()["results"] == []
