"""POST /api/v1/notifications/{id}/cancel and /resend: what can be cancelled (also under a
dispatcher's lease, until the send starts), what can be resent, and the history of both."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from notifications import services
from notifications.errors import NotificationNotFound, StatusConflict
from notifications.models import Notification, Status
from outbox import store
from outbox.models import OutboxEntry
from tests.api_helpers import URL, assert_error, url_of
from tests.helpers import claim, enqueue, history, make_api_client, tenant, wait_until


def send(nid: str, status: str = "sent") -> store.Delivery:
    """Take `nid` through a dispatcher's claim, start and outcome."""
    (delivery,) = [d for d in claim() if d.notification_id == nid]
    assert store.start([delivery], dispatcher="d1") == {delivery.outbox_id}
    outcome = store.Outcome(delivery, status, provider_message_id=f"p-{delivery.attempt}" if status == "sent" else "",
                            error="" if status == "sent" else "boom", retry_delay=3600)
    assert store.record_outcomes([outcome], dispatcher="d1") == 1
    return delivery


@pytest.fixture
def api(db):
    return make_api_client()


def create(api, **fields) -> str:
    response = api.post(URL, {"channel": "fake", "to": "someone", "message": "hi", **fields}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def cancel(api, nid):
    return api.post(url_of(nid, "cancel"))


def resend(api, nid):
    return api.post(url_of(nid, "resend"))


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_a_queued_notification(api):
    nid = create(api)
    response = cancel(api, nid)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == nid and body["status"] == "cancelled"
    assert [e["status"] for e in body["events"]] == ["queued", "cancelled"]
    assert body["events"][-1]["note"] == "cancelled by client tests"

    assert Notification.objects.get(pk=nid).status == "cancelled"
    event = history(nid)[-1]
    assert (event.status, event.dispatcher) == ("cancelled", "")
    assert not OutboxEntry.objects.filter(notification_id=nid).exists()
    assert claim() == []  # never sent
    assert api.get(url_of(nid)).json()["status"] == "cancelled"


def test_cancel_with_a_trailing_slash(api):
    nid = create(api)
    assert api.post(url_of(nid, "cancel") + "/").status_code == 200


def test_cancel_a_scheduled_notification(api):
    nid = create(api, send_at=(timezone.now() + timedelta(hours=1)).isoformat())
    response = cancel(api, nid)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert [e.status for e in history(nid)] == ["scheduled", "cancelled"]
    assert OutboxEntry.objects.count() == 0


def test_cancel_a_retrying_notification(api):
    nid = create(api)
    send(nid, status="retrying")  # failed transiently; the next attempt is an hour away
    assert Notification.objects.get(pk=nid).status == "retrying"
    response = cancel(api, nid)
    assert response.status_code == 200, response.content
    assert [e.status for e in history(nid)] == ["queued", "retrying", "cancelled"]
    assert OutboxEntry.objects.count() == 0


def test_cancel_wins_over_a_dispatcher_holding_the_lease_before_it_starts(api):
    nid = create(api)
    (delivery,) = claim(dispatcher="host:123:abcd")  # leased, START not yet run

    response = cancel(api, nid)
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    event = history(nid)[-1]
    assert event.status == "cancelled"
    assert event.dispatcher == "host:123:abcd"
    assert "host:123:abcd" in event.note and "had not started" in event.note
    assert event.note.startswith("cancelled by client tests")

    # The holder's START now finds nothing to send, and a late outcome changes nothing.
    assert store.start([delivery], dispatcher="host:123:abcd") == set()
    assert store.record_outcomes([store.Outcome(delivery, "sent")], dispatcher="host:123:abcd") == 0
    notification = Notification.objects.get(pk=nid)
    assert (notification.status, notification.attempts, notification.sent_at) == ("cancelled", 0, None)
    assert [e.status for e in history(nid)] == ["queued", "cancelled"]
    assert OutboxEntry.objects.count() == 0


def test_cancel_after_the_send_started_answers_409(api):
    nid = create(api)
    (delivery,) = claim()
    assert store.start([delivery], dispatcher="d1") == {delivery.outbox_id}

    error = assert_error(cancel(api, nid), 409, "conflict")
    assert "sending" in error["message"]
    assert Notification.objects.get(pk=nid).status == "sending"
    assert OutboxEntry.objects.filter(notification_id=nid, sending=True).exists()
    assert [e.status for e in history(nid)] == ["queued"]
    # the send completes as usual
    assert store.record_outcomes([store.Outcome(delivery, "sent")], dispatcher="d1") == 1
    assert Notification.objects.get(pk=nid).status == "sent"


@pytest.mark.parametrize("final", ["sent", "failed"])
def test_cancel_a_finished_notification_answers_409(api, final):
    nid = create(api)
    send(nid, status=final)
    error = assert_error(cancel(api, nid), 409, "conflict")
    assert final in error["message"]
    assert Notification.objects.get(pk=nid).status == final
    assert history(nid)[-1].status == final


def test_cancel_twice_answers_409_the_second_time(api):
    nid = create(api)
    assert cancel(api, nid).status_code == 200
    error = assert_error(cancel(api, nid), 409, "conflict")
    assert "cancelled" in error["message"]
    assert [e.status for e in history(nid)] == ["queued", "cancelled"]


def test_cancel_an_unknown_id_answers_404(api):
    assert_error(cancel(api, uuid.uuid4()), 404, "not_found")
    assert_error(api.post(f"{URL}/not-a-uuid/cancel"), 404, "not_found")


def test_cancel_racing_start_exactly_one_wins(transactional_db):
    """CANCEL and START on two connections at the same moment, many times over: either the
    cancel wins (START returns nothing) or the send started (the cancel is refused), never both."""
    client_id = tenant().pk
    ids = enqueue(20)
    outcomes = []
    for nid in ids:
        (delivery,) = claim(limit=1)
        assert delivery.notification_id == nid
        barrier = threading.Barrier(2)
        result: dict = {}

        def do_start(delivery=delivery, result=result, barrier=barrier):
            try:
                barrier.wait(timeout=10)
                result["started"] = store.start([delivery], dispatcher="d1")
            finally:
                connections.close_all()

        def do_cancel(nid=delivery.notification_id, result=result, barrier=barrier):
            try:
                barrier.wait(timeout=10)
                result["cancel"] = store.cancel(notification_id=nid, client_id=client_id, note="race")
            finally:
                connections.close_all()

        threads = [threading.Thread(target=do_start), threading.Thread(target=do_cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        started = bool(result["started"])
        _, cancelled = result["cancel"]
        assert started != cancelled, result  # exactly one of them
        status = Notification.objects.get(pk=delivery.notification_id).status
        assert status == ("sending" if started else "cancelled")
        outcomes.append(started)
    assert len(outcomes) == 20


# --- resend ------------------------------------------------------------------------------------------


def test_resend_a_sent_notification(api):
    nid = create(api)
    first = send(nid)
    before = {e.pk for e in history(nid)}

    response = resend(api, nid)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert [e["status"] for e in body["events"]] == ["queued", "sent", "queued"]
    assert body["events"][-1]["note"] == "resent by client tests"

    notification = Notification.objects.get(pk=nid)
    assert notification.status == "queued" and notification.attempts == 0
    assert before <= {e.pk for e in history(nid)}  # every earlier event kept
    entry = OutboxEntry.objects.get(notification_id=nid)
    assert entry.pk != first.outbox_id and not entry.sending and entry.locked_by is None

    # it goes the usual way again
    again = send(nid)
    assert again.notification_id == nid
    events = history(nid)
    assert [(e.status, e.note) for e in events] == [
        ("queued", ""), ("sent", ""), ("queued", "resent by client tests"), ("sent", ""),
    ]
    # a resend is a new delivery: its attempts count from 1 again (the retry budget restarts)
    assert [e.attempt for e in events] == [0, 1, 0, 1]


def test_resend_a_failed_notification(api):
    nid = create(api)
    send(nid, status="failed")
    response = resend(api, nid)
    assert response.status_code == 202, response.content
    notification = Notification.objects.get(pk=nid)
    assert (notification.status, notification.last_error) == ("queued", "")
    assert [e.status for e in history(nid)] == ["queued", "failed", "queued"]
    assert OutboxEntry.objects.filter(notification_id=nid).count() == 1


@pytest.mark.parametrize("state", ["queued", "scheduled", "sending", "retrying", "cancelled"])
def test_resend_anything_but_sent_or_failed_answers_409(api, state):
    nid = create(api, **({"send_at": (timezone.now() + timedelta(hours=1)).isoformat()} if state == "scheduled" else {}))
    if state in ("sending", "retrying"):
        (delivery,) = claim()
        store.start([delivery], dispatcher="d1")
        if state == "retrying":
            store.record_outcomes([store.Outcome(delivery, "retrying", error="x", retry_delay=3600)], dispatcher="d1")
    elif state == "cancelled":
        assert cancel(api, nid).status_code == 200
    assert Notification.objects.get(pk=nid).status == state
    outbox_before = list(OutboxEntry.objects.values_list("id", flat=True))
    events_before = len(history(nid))

    error = assert_error(resend(api, nid), 409, "conflict")
    assert state in error["message"]
    assert Notification.objects.get(pk=nid).status == state
    assert list(OutboxEntry.objects.values_list("id", flat=True)) == outbox_before  # no second row
    assert len(history(nid)) == events_before


def test_resend_twice_queues_once(api):
    nid = create(api)
    send(nid)
    assert resend(api, nid).status_code == 202
    assert_error(resend(api, nid), 409, "conflict")
    assert OutboxEntry.objects.filter(notification_id=nid).count() == 1
    assert [e.status for e in history(nid)] == ["queued", "sent", "queued"]


# --- the services and the one definition of the status rules ---------------------------------------


def test_the_services_raise_domain_errors_with_the_answers_message(db):
    (queued,) = enqueue(1)
    client_id = tenant().pk
    missing = uuid.uuid4()
    with pytest.raises(NotificationNotFound) as not_found:
        services.notification_cancel(notification_id=missing, client_id=client_id, by="test")
    assert str(not_found.value) == f"No notification {missing}."
    with pytest.raises(StatusConflict) as conflict:
        services.notification_resend(notification_id=queued, client_id=client_id, by="test")
    assert conflict.value.status == "queued"
    assert conflict.value.message == f"Notification {queued} is queued; only sent, delivered, undelivered or failed notifications can be resent."


def test_cancel_and_resend_are_one_statement_each(db, django_assert_num_queries):
    (nid,) = enqueue(1)
    client_id = tenant().pk
    with django_assert_num_queries(1):
        assert store.resend(notification_id=nid, client_id=client_id, note="x") == ("queued", False)
    with django_assert_num_queries(1):
        assert store.cancel(notification_id=nid, client_id=client_id, note="x") == ("queued", True)


def test_the_statements_take_their_statuses_from_the_one_definition(api, monkeypatch):
    """Status.cancellable() and Status.resendable() decide what the SQL changes and what the
    answer says: narrowed here, a retrying notification can no longer be cancelled, nor a
    failed one resent."""
    monkeypatch.setattr(Status, "cancellable", classmethod(lambda cls: [cls.SCHEDULED, cls.QUEUED]))
    monkeypatch.setattr(Status, "resendable", classmethod(lambda cls: [cls.SENT]))
    retrying = create(api)
    send(retrying, status="retrying")
    failed = create(api)
    send(failed, status="failed")

    error = assert_error(cancel(api, retrying), 409, "conflict")
    assert error["message"] == f"Notification {retrying} is retrying; only scheduled, queued notifications can be cancelled."
    error = assert_error(resend(api, failed), 409, "conflict")
    assert error["message"] == f"Notification {failed} is failed; only sent notifications can be resent."
    assert [e.status for e in history(retrying)] == ["queued", "retrying"]
    assert [e.status for e in history(failed)] == ["queued", "failed"]
    assert cancel(api, create(api)).status_code == 200


# --- real dispatchers ------------------------------------------------------------------------------


def test_a_resent_notification_is_sent_again_by_a_dispatcher(start_dispatchers):
    api = make_api_client()
    start_dispatchers("--processes", "1")
    nid = create(api)
    wait_until(lambda: Notification.objects.get(pk=nid).status == "sent", timeout=20, message="first send")

    response = resend(api, nid)
    assert response.status_code == 202, response.content
    wait_until(lambda: [e.status for e in history(nid)].count("sent") == 2, timeout=15, message="second send")

    events = history(nid)
    assert [e.status for e in events] == ["queued", "sent", "queued", "sent"]
    assert events[2].note == "resent by client tests"
    first, second = events[1], events[3]
    assert first.provider_message_id != second.provider_message_id
    assert first.dispatcher and second.dispatcher
    notification = Notification.objects.get(pk=nid)
    assert notification.status == "sent" and notification.sent_at >= second.created_at - timedelta(seconds=1)
    assert OutboxEntry.objects.count() == 0


def test_a_cancelled_notification_is_never_sent_by_a_dispatcher(start_dispatchers):
    api = make_api_client()
    cancelled = create(api)
    assert cancel(api, cancelled).status_code == 200
    kept = create(api)
    start_dispatchers("--processes", "1")
    wait_until(lambda: Notification.objects.get(pk=kept).status == "sent", timeout=20, message="the other one sent")
    assert Notification.objects.get(pk=cancelled).status == "cancelled"
    assert [e.status for e in history(cancelled)] == ["queued", "cancelled"]
