"""POST /api/v1/notifications/batch: up to 1,000 notifications, validated all first, written
all-or-nothing with bulk inserts; ids in order, or every item's errors by index."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from notifications.models import Notification, NotificationEvent
from outbox.models import OutboxEntry
from tests.api_helpers import BATCH_URL, URL, assert_error
from tests.helpers import make_api_client, row_counts


def item(i: int = 0, **fields) -> dict:
    return {"channel": "fake", "to": f"user-{i}", "message": f"message {i}", **fields}


def post_batch(api, items, **extra):
    return api.post(BATCH_URL, {"notifications": items, **extra}, format="json")


@pytest.fixture
def api(db):
    return make_api_client()


# --- accepted ------------------------------------------------------------------------------


def test_three_valid_items_are_accepted_with_their_ids_in_order(api):
    items = [
        item(0),
        {"channel": "email-log", "to": "Alice@EXAMPLE.COM", "message": "hello", "subject": "Hi"},
        {"type": "sms-log", "to": "+1 415 555 0100", "message": "code 1234", "priority": "high"},
    ]
    response = post_batch(api, items)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["count"] == 3 and len(body["ids"]) == 3
    ids = [uuid.UUID(i) for i in body["ids"]]
    assert len(set(ids)) == 3

    stored = Notification.objects.in_bulk(ids)
    assert [(stored[i].channel, stored[i].recipient, stored[i].status) for i in ids] == [
        ("fake", "user-0", "queued"),
        ("email-log", "Alice@example.com", "queued"),  # normalised like a single POST
        ("sms-log", "+14155550100", "queued"),
    ]
    assert stored[ids[1]].subject == "Hi"
    assert stored[ids[2]].get_priority_display() == "high"
    assert all(stored[i].client.name == "tests" for i in ids)
    assert row_counts() == (3, 3, 3)
    assert set(OutboxEntry.objects.values_list("notification_id", flat=True)) == set(ids)
    assert set(NotificationEvent.objects.values_list("status", flat=True)) == {"queued"}
    # each is readable like any other notification
    assert api.get(f"{URL}/{ids[2]}").json()["to"] == "+14155550100"


def test_trailing_slash(api):
    response = api.post(BATCH_URL + "/", {"notifications": [item()]}, format="json")
    assert response.status_code == 202, response.content


def test_a_batch_may_mix_scheduled_and_prioritised_items(api):
    send_at = (timezone.now() + timedelta(hours=1)).isoformat()
    response = post_batch(api, [item(0), item(1, send_at=send_at), item(2, priority="low")])
    assert response.status_code == 202, response.content
    ids = response.json()["ids"]
    stored = Notification.objects.in_bulk([uuid.UUID(i) for i in ids])
    assert [stored[uuid.UUID(i)].status for i in ids] == ["queued", "scheduled", "queued"]
    assert stored[uuid.UUID(ids[2])].priority == 2


def test_1000_items_in_one_request_with_a_handful_of_queries(api, django_assert_max_num_queries):
    items = [item(i) for i in range(1000)]
    started = time.monotonic()
    # authentication (the key's first use) and one bulk statement: no round trip per row
    with django_assert_max_num_queries(3):
        response = post_batch(api, items)
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.content[:500]
    ids = response.json()["ids"]
    assert response.json()["count"] == len(ids) == len(set(ids)) == 1000
    assert row_counts() == (1000, 1000, 1000)
    recipients = dict(Notification.objects.values_list("id", "recipient"))
    assert [recipients[uuid.UUID(i)] for i in ids] == [f"user-{i}" for i in range(1000)]  # in order
    assert elapsed < 10, elapsed


def test_1001_items_are_refused(api):
    error = assert_error(post_batch(api, [item(i) for i in range(1001)]), 400, "invalid", fields=["notifications"])
    assert "1000" in error["message"]
    assert row_counts() == (0, 0, 0)


def test_an_empty_list_is_refused(api):
    assert_error(post_batch(api, []), 400, "invalid", fields=["notifications"])


@pytest.mark.parametrize("body", [{}, {"notifications": None}, {"notifications": {"0": item()}},
                                  {"notifications": "x"}, [item()]])
def test_a_missing_or_malformed_list_is_refused(api, body):
    assert_error(api.post(BATCH_URL, body, format="json"), 400, "invalid")
    assert row_counts() == (0, 0, 0)


def test_an_unknown_top_level_field_is_refused(api):
    error = assert_error(post_batch(api, [item()], idempotency_key="k"), 400, "invalid", fields=["idempotency_key"])
    assert "notifications" in error["fields"]["idempotency_key"][0]
    assert row_counts() == (0, 0, 0)


# --- all or nothing, every error by index ----------------------------------------------------------


def test_an_invalid_item_at_index_2_rejects_the_batch_and_names_its_field(api):
    items = [item(0), item(1), {"channel": "fake", "message": "no recipient"}, item(3)]
    error = assert_error(post_batch(api, items), 400, "invalid")
    assert set(error["fields"]) == {"notifications[2].to"}
    assert "notifications[2].to" in error["message"]
    assert row_counts() == (0, 0, 0)  # items 0, 1 and 3 were valid, and are not written either


def test_a_recipient_the_channel_refuses_is_named_by_index(api):
    items = [item(0), item(1), {"channel": "email-log", "to": "not-an-email", "message": "hi"}]
    error = assert_error(post_batch(api, items), 400, "invalid")
    assert set(error["fields"]) == {"notifications[2].to"}
    assert row_counts() == (0, 0, 0)


def test_a_batch_of_one_invalid_item_still_names_it_by_index(api):
    # Regression: the channel's recipient check used to be reported as plain "to" here.
    error = assert_error(post_batch(api, [{"channel": "sms-log", "to": "12345", "message": "hi"}]), 400, "invalid")
    assert set(error["fields"]) == {"notifications[0].to"}
    assert row_counts() == (0, 0, 0)


def test_several_invalid_items_are_all_reported(api):
    items = [
        {"channel": "fake", "to": "x"},                                      # 0: message missing
        item(1),                                                             # 1: valid
        {"channel": "pigeon", "to": "x", "message": "hi"},                   # 2: unknown channel
        {"channel": "email-log", "to": "bob@", "message": "hi"},             # 3: the channel refuses the recipient
        {"channel": "sms-log", "to": "+14155550100", "message": "x" * 1601},  # 4: too long for SMS
        item(5, recipient="typo"),                                           # 5: unknown field
        item(6, priority="urgent", send_at="yesterday"),                     # 6: two bad values
        "not an object",                                                     # 7
    ]
    error = assert_error(post_batch(api, items), 400, "invalid")
    assert set(error["fields"]) == {
        "notifications[0].message",
        "notifications[2].channel",
        "notifications[3].to",
        "notifications[4].message",
        "notifications[5].recipient",
        "notifications[6].priority",
        "notifications[6].send_at",
        "notifications[7]",
    }
    for name in error["fields"]:
        assert name in error["message"]
    assert row_counts() == (0, 0, 0)


def test_an_invalid_item_among_1000_rejects_them_all(api):
    items = [item(i) for i in range(1000)]
    items[999] = {**items[999], "channel": "email-log"}  # "user-999" is no email address
    error = assert_error(post_batch(api, items), 400, "invalid")
    assert set(error["fields"]) == {"notifications[999].to"}
    assert row_counts() == (0, 0, 0)
