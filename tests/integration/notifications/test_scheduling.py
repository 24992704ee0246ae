"""send_at (scheduled, then the usual path), expires_at (expired, never sent) and priority
(claimed first among due rows), through the API, the delivery SQL and real dispatchers."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from notifications.models import Notification, Priority
from outbox import store
from outbox.models import OutboxEntry
from tests.api_helpers import URL, assert_error
from tests.helpers import claim, enqueue, history, make_api_client, row_counts, wait_until


def post(api, **fields):
    return api.post(URL, {"channel": "fake", "to": "someone", "message": "hi", **fields}, format="json")


def iso(when: datetime) -> str:
    return when.isoformat()


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def api(db):
    return make_api_client()


# --- send_at -----------------------------------------------------------------------------------


def test_send_at_in_the_future_waits_as_scheduled(api):
    send_at = timezone.now() + timedelta(hours=2)
    response = post(api, send_at=iso(send_at))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "scheduled"
    assert parse(body["send_at"]) == send_at

    notification = Notification.objects.get(pk=body["id"])
    assert (notification.status, notification.send_at) == ("scheduled", send_at)
    assert [e.status for e in history(notification.pk)] == ["scheduled"]
    entry = OutboxEntry.objects.get(notification_id=notification.pk)
    assert entry.run_at == send_at
    assert claim() == []  # not claimable before its time
    assert api.get(f"{URL}?status=scheduled").json()["results"][0]["id"] == body["id"]


def test_a_scheduled_notification_goes_the_usual_path_once_due(api):
    nid = post(api, send_at=iso(timezone.now() + timedelta(hours=2))).json()["id"]
    assert claim() == []
    with connection.cursor() as cursor:  # its time has come
        cursor.execute("UPDATE outbox SET run_at = now() - interval '1 second' WHERE notification_id = %s", [nid])
    (delivery,) = claim()
    assert delivery.notification_id == nid
    assert store.start([delivery], dispatcher="d1") == {delivery.outbox_id}
    assert Notification.objects.get(pk=nid).status == "sending"
    store.record_outcomes([store.Outcome(delivery, "sent", provider_message_id="p")], dispatcher="d1")
    assert [e.status for e in history(nid)] == ["scheduled", "sent"]


def test_send_at_slightly_in_the_past_means_now(api):
    send_at = timezone.now() - timedelta(minutes=1)  # inside the clock-drift tolerance
    response = post(api, send_at=iso(send_at))
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    entry = OutboxEntry.objects.get()
    assert entry.run_at > send_at  # due at its creation, not a minute early
    assert [d.notification_id for d in claim()] == [response.json()["id"]]


def test_send_at_null_is_accepted_as_now(api):
    response = post(api, send_at=None)
    assert response.status_code == 202
    assert response.json()["status"] == "queued" and response.json()["send_at"] is None


def test_send_at_beyond_the_horizon_is_refused(api):
    days = settings.NOTIFY_MAX_SCHEDULE_DAYS
    error = assert_error(post(api, send_at=iso(timezone.now() + timedelta(days=days, minutes=5))), 400, "invalid",
                         fields=["send_at"])
    assert str(int(days)) in error["fields"]["send_at"][0]
    assert row_counts() == (0, 0, 0)
    # just inside it is fine
    assert post(api, send_at=iso(timezone.now() + timedelta(days=days, minutes=-5))).status_code == 202


def test_the_horizon_is_configurable(api):
    with override_settings(NOTIFY_MAX_SCHEDULE_DAYS=1):
        assert_error(post(api, send_at=iso(timezone.now() + timedelta(days=2))), 400, "invalid", fields=["send_at"])
        assert post(api, send_at=iso(timezone.now() + timedelta(hours=20))).status_code == 202


def test_send_at_in_the_past_beyond_the_tolerance_is_refused(api):
    assert_error(post(api, send_at=iso(timezone.now() - timedelta(hours=1))), 400, "invalid", fields=["send_at"])
    assert row_counts() == (0, 0, 0)


@pytest.mark.parametrize("value", ["tomorrow", "2030-13-01T00:00:00Z", 12345, True])
def test_send_at_that_is_not_a_datetime_is_refused(api, value):
    assert_error(post(api, send_at=value), 400, "invalid", fields=["send_at"])


# --- expires_at --------------------------------------------------------------------------------


def test_expires_at_in_the_past_is_refused(api):
    assert_error(post(api, expires_at=iso(timezone.now() - timedelta(seconds=5))), 400, "invalid", fields=["expires_at"])
    assert row_counts() == (0, 0, 0)


@pytest.mark.parametrize("after_send_at", [timedelta(0), timedelta(minutes=-10)])
def test_expires_at_not_after_send_at_is_refused(api, after_send_at):
    send_at = timezone.now() + timedelta(hours=1)
    response = post(api, send_at=iso(send_at), expires_at=iso(send_at + after_send_at))
    error = assert_error(response, 400, "invalid", fields=["expires_at"])
    assert "send_at" in error["fields"]["expires_at"][0]
    assert row_counts() == (0, 0, 0)


def test_expires_at_in_the_future_is_stored(api):
    send_at = timezone.now() + timedelta(hours=1)
    expires_at = send_at + timedelta(minutes=10)
    body = post(api, send_at=iso(send_at), expires_at=iso(expires_at)).json()
    assert parse(body["expires_at"]) == expires_at
    assert Notification.objects.get().expires_at == expires_at


def expire_now(nid: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE notification SET expires_at = now() - interval '1 second' WHERE id = %s", [nid])


def test_a_notification_whose_expires_at_passes_before_start_is_expired_not_sent(db):
    (nid,) = enqueue(1, expires_at=timezone.now() + timedelta(hours=1))
    expire_now(nid)

    (delivery,) = claim()  # claimed (its lease is taken) ...
    assert store.start([delivery], dispatcher="d1") == set()  # ... but not startable
    notification = Notification.objects.get(pk=nid)
    assert notification.status == "expired"
    assert notification.attempts == 0 and notification.sent_at is None
    events = history(nid)
    assert [e.status for e in events] == ["queued", "expired"]
    assert events[-1].dispatcher == "d1" and "expires_at" in events[-1].note
    assert OutboxEntry.objects.count() == 0  # nothing left to send
    assert claim() == []
    # a late outcome for it cannot revive it
    assert store.record_outcomes([store.Outcome(delivery, "sent")], dispatcher="d1") == 0
    assert Notification.objects.get(pk=nid).status == "expired"


def test_only_the_expired_rows_of_a_batch_are_held_back(db):
    ids = enqueue(3, expires_at=timezone.now() + timedelta(hours=1))
    expire_now(ids[1])
    deliveries = claim()
    started = store.start(deliveries, dispatcher="d1")
    by_id = {d.notification_id: d.outbox_id for d in deliveries}
    assert started == {by_id[ids[0]], by_id[ids[2]]}
    assert [Notification.objects.get(pk=i).status for i in ids] == ["sending", "expired", "sending"]


def test_an_expired_notification_cannot_be_cancelled(api):
    nid = post(api, expires_at=iso(timezone.now() + timedelta(hours=1))).json()["id"]
    expire_now(nid)
    (delivery,) = claim()
    store.start([delivery], dispatcher="d1")
    assert_error(api.post(f"{URL}/{nid}/cancel"), 409, "conflict")


# --- priority ------------------------------------------------------------------------------------


@pytest.mark.parametrize("label, value", [("high", 0), ("normal", 1), ("low", 2)])
def test_priority_is_stored_on_the_notification_and_its_outbox_row(api, label, value):
    body = post(api, priority=label).json()
    assert body["priority"] == label
    assert Notification.objects.get().priority == value
    assert OutboxEntry.objects.get().priority == value


def test_priority_defaults_to_normal(api):
    assert post(api).json()["priority"] == "normal"
    assert OutboxEntry.objects.get().priority == Priority.NORMAL


@pytest.mark.parametrize("value", ["urgent", "HIGH", 0, None])
def test_an_unknown_priority_is_refused(api, value):
    assert_error(post(api, priority=value), 400, "invalid", fields=["priority"])


def test_higher_priority_is_claimed_first_then_older_first(db):
    # Enqueued low first, so that age alone would give the opposite order.
    (low,) = enqueue(1, priority=Priority.LOW)
    normal_new, normal_old = enqueue(2, priority=Priority.NORMAL)
    (high,) = enqueue(1, priority=Priority.HIGH)
    with connection.cursor() as cursor:  # all due; the second normal one has waited longer
        cursor.execute("UPDATE outbox SET run_at = now() - interval '1 minute'")
        cursor.execute("UPDATE outbox SET run_at = now() - interval '2 minutes' WHERE notification_id = %s",
                       [normal_old])
        cursor.execute("UPDATE outbox SET run_at = now() - interval '1 hour' WHERE notification_id = %s", [low])

    order = [d.notification_id for _ in range(4) for d in claim(limit=1)]
    assert order == [high, normal_old, normal_new, low]
    assert claim() == []


def test_a_claim_fills_its_limit_across_priorities_in_order(db):
    lows = enqueue(3, priority=Priority.LOW)
    (high,) = enqueue(1, priority=Priority.HIGH)
    normals = enqueue(2, priority=Priority.NORMAL)
    claimed = {d.notification_id for d in claim(limit=4)}
    assert len(claimed) == 4
    assert high in claimed and set(normals) <= claimed  # all of the higher priorities ...
    assert len(claimed & set(lows)) == 1  # ... and the rest of the limit from the lowest


def test_a_high_priority_row_that_is_not_due_does_not_block_the_others(db):
    (high,) = enqueue(1, priority=Priority.HIGH, send_at=timezone.now() + timedelta(hours=1))
    (low,) = enqueue(1, priority=Priority.LOW)
    assert [d.notification_id for d in claim()] == [low]


# --- real dispatchers ------------------------------------------------------------------------------


def test_a_dispatcher_sends_a_scheduled_notification_after_its_send_at_not_before(start_dispatchers):
    dispatchers = start_dispatchers("--processes", "1")
    wait_until(lambda: "started:" in dispatchers.log(), timeout=20, message="dispatcher start")
    api = make_api_client()
    send_at = timezone.now() + timedelta(seconds=2)
    response = post(api, send_at=iso(send_at))
    assert response.status_code == 202 and response.json()["status"] == "scheduled"
    nid = response.json()["id"]

    # Until send_at, the dispatcher (polling every 0.2 s, and woken by the intake's NOTIFY)
    # leaves it alone.
    while timezone.now() < send_at - timedelta(seconds=0.3):
        assert Notification.objects.get(pk=nid).status == "scheduled"
        time.sleep(0.1)

    wait_until(lambda: Notification.objects.get(pk=nid).status == "sent", timeout=15, message="scheduled send")
    notification = Notification.objects.get(pk=nid)
    assert notification.sent_at >= send_at
    events = history(nid)
    assert [e.status for e in events] == ["scheduled", "sent"]
    assert events[-1].created_at >= send_at
    assert notification.sent_at - send_at < timedelta(seconds=5)
    assert OutboxEntry.objects.count() == 0


def test_a_dispatcher_expires_what_it_finds_past_expires_at(start_dispatchers):
    api = make_api_client()
    expiring = post(api, expires_at=iso(timezone.now() + timedelta(hours=1))).json()["id"]
    fresh = post(api, expires_at=iso(timezone.now() + timedelta(hours=1))).json()["id"]
    expire_now(expiring)  # it passed while no dispatcher was running

    start_dispatchers("--processes", "1")
    wait_until(lambda: Notification.objects.get(pk=fresh).status == "sent", timeout=20, message="fresh one sent")
    wait_until(lambda: Notification.objects.get(pk=expiring).status == "expired", timeout=5, message="expired")
    assert [e.status for e in history(expiring)] == ["queued", "expired"]
    assert Notification.objects.get(pk=expiring).sent_at is None
    assert OutboxEntry.objects.count() == 0
