"""The delivery SQL (outbox/sql.py) against the real database: claim, lease, fencing, outcomes."""

from __future__ import annotations

import threading
import time

from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from notifications.models import Notification, NotificationEvent
from outbox import store
from outbox.models import OutboxEntry
from tests.helpers import claim, enqueue


def test_enqueue_writes_notification_event_and_outbox_row_together(db):
    (nid,) = enqueue(1)
    notification = Notification.objects.get(pk=nid)
    assert notification.status == "queued"
    assert list(notification.events.values_list("status", flat=True)) == ["queued"]
    entry = OutboxEntry.objects.get(notification_id=nid)
    assert (entry.channel, entry.attempts, entry.locked_by) == ("fake", 0, None)


def test_claim_leases_rows_and_marks_them_sending(db):
    ids = enqueue(3)
    deliveries = claim(limit=2, start=True)
    assert len(deliveries) == 2
    assert {d.notification_id for d in deliveries} <= set(ids)
    assert all(d.attempt == 1 and d.message.recipient.endswith("@example.com") for d in deliveries)
    for d in deliveries:
        assert Notification.objects.get(pk=d.notification_id).status == "sending"
        entry = OutboxEntry.objects.get(pk=d.outbox_id)
        assert entry.locked_by == "d1" and entry.lease_token == d.lease_token and entry.attempts == 1
    # leased rows are not due: only the third row is left to claim
    rest = claim(limit=10, dispatcher="d2", start=True)
    assert len(rest) == 1 and rest[0].notification_id not in {d.notification_id for d in deliveries}
    assert claim(limit=10, dispatcher="d3", start=True) == []


def test_claim_takes_only_the_requested_channels(db):
    enqueue(2, channel="fake")
    (email_id,) = enqueue(1, channel="email-log")
    deliveries = claim(channels=["email-log"], start=True)
    assert [d.notification_id for d in deliveries] == [email_id]


def test_claim_takes_the_longest_due_rows_first(db):
    ids = enqueue(3)
    with connection.cursor() as cursor:  # the last one has been due for an hour (a retry, say)
        cursor.execute("UPDATE outbox SET run_at = now() - interval '1 hour' WHERE notification_id = %s", [ids[2]])
    assert [d.notification_id for d in claim(limit=1, start=True)] == [ids[2]]

def test_outcomes_are_recorded_in_one_batch(db):
    ids = enqueue(3)
    d_sent, d_failed, d_retry = sorted(claim(start=True), key=lambda d: ids.index(d.notification_id))
    recorded = store.record_outcomes(
        [
            store.Outcome(d_sent, "sent", provider_message_id="prov-1"),
            store.Outcome(d_failed, "failed", error="recipient unknown"),
            store.Outcome(d_retry, "retrying", error="timeout", retry_delay=30),
        ],
        dispatcher="d1",
    )
    assert recorded == 3
    sent = Notification.objects.get(pk=d_sent.notification_id)
    assert (sent.status, sent.provider_message_id, sent.sent_at is not None) == ("sent", "prov-1", True)
    failed = Notification.objects.get(pk=d_failed.notification_id)
    assert (failed.status, failed.last_error, failed.sent_at) == ("failed", "recipient unknown", None)
    retrying = Notification.objects.get(pk=d_retry.notification_id)
    assert (retrying.status, retrying.last_error) == ("retrying", "timeout")
    # finished rows leave the outbox; the retried one waits ~30 s, unleased
    entry = OutboxEntry.objects.get()
    assert str(entry.notification_id) == d_retry.notification_id
    assert entry.locked_by is None and entry.lease_token is None
    event = NotificationEvent.objects.get(notification_id=d_retry.notification_id, status="retrying")
    assert 29 <= (event.next_attempt_at - event.created_at).total_seconds() <= 31
    assert claim(start=True) == []  # not due before its backoff
    history = NotificationEvent.objects.filter(notification_id=d_sent.notification_id)
    assert [(e.status, e.attempt, e.provider_message_id, e.dispatcher) for e in history] == [
        ("queued", 0, "", ""), ("sent", 1, "prov-1", "d1")
    ]


def test_an_expired_lease_is_claimed_again_and_the_stale_outcome_is_fenced_out(db):
    (nid,) = enqueue(1)
    (first,) = claim(lease=0.3, dispatcher="stalled", start=True)
    time.sleep(0.5)
    (second,) = claim(lease=60, dispatcher="healthy", start=True)
    assert second.notification_id == nid and second.attempt == 2
    assert second.lease_token != first.lease_token
    # The history says why the notification is tried again.
    expired = NotificationEvent.objects.get(notification_id=nid, status="retrying")
    assert expired.dispatcher == "stalled" and "lease expired" in expired.error
    # The new holder records its outcome; the old holder's late outcome is dropped.
    assert store.record_outcomes([store.Outcome(second, "sent", provider_message_id="new")], dispatcher="healthy") == 1
    assert store.record_outcomes([store.Outcome(first, "failed", error="stale")], dispatcher="stalled") == 0
    notification = Notification.objects.get(pk=nid)
    assert (notification.status, notification.provider_message_id, notification.attempts) == ("sent", "new", 2)


def test_attempts_whose_leases_lapsed_count_and_the_cap_fails_the_notification(db):
    """A send that never comes back (its dispatcher stalls each time) is not sent forever:
    every started attempt counts, and at the cap the row is finished as failed."""
    (nid,) = enqueue(1)
    for attempt in (1, 2, 3):
        (delivery,) = claim(lease=0.2, dispatcher=f"stalled-{attempt}", start=True)  # STARTed, never recorded
        assert delivery.attempt == attempt
        time.sleep(0.3)
    assert store.claim(dispatcher="d", limit=10, lease_seconds=60, channels=["fake"], max_attempts=3) == []
    notification = Notification.objects.get(pk=nid)
    assert (notification.status, notification.attempts) == ("failed", 3)
    assert notification.last_error == "outcome unknown after 3 attempts whose leases lapsed"
    assert not OutboxEntry.objects.exists()
    assert [(e.status, e.attempt) for e in notification.events.order_by("created_at", "id")] == [
        ("queued", 0), ("retrying", 1), ("retrying", 2), ("failed", 3)]
    assert "no attempts left" in notification.events.get(status="failed").note


def test_at_the_cap_a_lapsed_attempt_after_an_error_keeps_the_error_in_the_reason(db):
    (nid,) = enqueue(1)
    (first,) = claim(start=True)
    store.record_outcomes([store.Outcome(first, "retrying", error="provider answered HTTP 503")], dispatcher="d1")
    time.sleep(0.01)
    (second,) = claim(lease=0.2, start=True)  # due at once (no retry delay), STARTed, never recorded
    time.sleep(0.3)
    assert store.claim(dispatcher="d", limit=10, lease_seconds=60, channels=["fake"], max_attempts=2) == []
    notification = Notification.objects.get(pk=nid)
    assert notification.status == "failed"
    assert notification.last_error == ("gave up after 2 attempts: the lease of the last one lapsed during the send "
                                       "(outcome unknown); the error before: provider answered HTTP 503")


def test_a_row_under_the_cap_is_claimed_again_after_a_lapsed_lease(db):
    (nid,) = enqueue(1)
    claim(lease=0.2, start=True)
    time.sleep(0.3)
    (again,) = store.claim(dispatcher="d", limit=10, lease_seconds=60, channels=["fake"], max_attempts=2)
    assert again.notification_id == nid and again.attempt == 2


def test_concurrent_claimers_never_share_a_row(transactional_db):
    enqueue(600)
    claimed: list[list[int]] = []
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        mine: list[int] = []
        try:
            while batch := claim(limit=25, dispatcher=name, start=True):
                mine.extend(d.outbox_id for d in batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            claimed.append(mine)
            connections.close_all()

    threads = [threading.Thread(target=claimer, args=(f"d{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    every = [outbox_id for mine in claimed for outbox_id in mine]
    assert len(every) == 600 and len(set(every)) == 600
    assert sum(1 for mine in claimed if mine) >= 2  # the work really was shared


def test_a_repeated_start_sends_again_without_counting_another_attempt(db):
    # START committed but its answer was lost: the dispatcher runs it again.
    (nid,) = enqueue(1)
    deliveries = store.claim(dispatcher="d1", limit=1, lease_seconds=60, channels=["fake"])
    first = store.start(deliveries, dispatcher="d1")
    again = store.start(deliveries, dispatcher="d1")
    assert first == again == {deliveries[0].outbox_id}
    assert OutboxEntry.objects.get().attempts == 1
    assert Notification.objects.get(pk=nid).attempts == 1


def test_rows_too_late_to_send_are_released_not_left_leased(db):
    enqueue(1)
    (delivery,) = store.claim(dispatcher="d1", limit=1, lease_seconds=60, channels=["fake"])
    store.release([delivery])
    entry = OutboxEntry.objects.get()
    assert (entry.locked_by, entry.lease_token, entry.sending) == (None, None, False)
    assert len(store.claim(dispatcher="d2", limit=1, lease_seconds=60, channels=["fake"])) == 1


def test_the_delivery_path_costs_one_statement_per_step_whatever_the_batch(db, django_assert_num_queries):
    # Guards the claim path's round trips: a claim, a START and a record are one statement each
    # for a batch of any size, also when its outcomes are mixed.
    enqueue(50)
    with django_assert_num_queries(1):
        deliveries = store.claim(dispatcher="d1", limit=50, lease_seconds=60, channels=["fake"])
    assert len(deliveries) == 50
    with django_assert_num_queries(1):
        assert len(store.start(deliveries, dispatcher="d1")) == 50
    with django_assert_num_queries(1):
        store.record_outcomes([store.Outcome(d, "sent", provider_message_id="p") for d in deliveries[:40]], dispatcher="d1")
    mixed = [store.Outcome(deliveries[40], "failed", error="x")] + [
        store.Outcome(d, "retrying", error="y", retry_delay=5) for d in deliveries[41:]
    ]
    with CaptureQueriesContext(connection) as captured:
        assert store.record_outcomes(mixed, dispatcher="d1") == 10
    statements = [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) == 1  # RECORD, for the final and the transient outcomes alike
