"""A new kind of channel is one class plus one settings entry: accepted by the API, validated
by its own rules and listed, against the real database."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from notifications.models import Notification
from outbox.models import OutboxEntry
from tests.channel_backends import PAGER
from tests.helpers import make_api_client

# What a channel without rate budgets, circuit breaker or fallbacks shows of them.
NO_POLICY = {"rate_limit": None, "recipient_rate_limit": None, "circuit_breaker": None, "fallback": []}


@pytest.fixture
def with_pager():
    with override_settings(NOTIFICATION_CHANNELS={**settings.NOTIFICATION_CHANNELS, "pager": PAGER}):
        yield


def test_a_new_channel_is_one_class_plus_one_settings_entry(db, with_pager):
    client = make_api_client()
    response = client.post("/api/v1/notifications", {"channel": "pager", "to": "Team-Ops", "message": "disk full"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["channel"] == "pager"
    assert response.json()["to"] == "team-ops"  # the new channel's own normalisation
    assert Notification.objects.get().channel == "pager"
    assert OutboxEntry.objects.get().channel == "pager"

    listed = client.get("/api/v1/channels")
    channels = {c["name"]: c for c in listed.json()["channels"]}
    assert channels["pager"] == {"name": "pager", "kind": "pager", "backend": "tests.channel_backends.PagerChannel",
                                 "send_timeout": 10.0, **NO_POLICY, "state": None, "receipts_url": None}
    assert {"email-log", "sms-log", "slack-log", "fake"} <= set(channels)
    assert b"s3cret" not in listed.content  # options (secrets) are never shown


def test_a_new_channel_validates_its_recipients(db, with_pager):
    response = make_api_client().post("/api/v1/notifications", {"channel": "pager", "to": "ops", "message": "x"}, format="json")
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"to"}
    assert Notification.objects.count() == 0


def test_without_the_settings_entry_the_channel_is_unknown(db):
    response = make_api_client().post("/api/v1/notifications", {"channel": "pager", "to": "team-ops", "message": "x"}, format="json")
    assert response.status_code == 400
    assert "channel" in response.json()["error"]["fields"]
