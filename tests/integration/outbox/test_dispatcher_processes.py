"""Dispatchers as real OS processes (`manage.py run_dispatchers`) against the test database."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from notifications.models import Notification, NotificationEvent
from outbox.models import OutboxEntry
from tests.helpers import count, enqueue, fake_channel, fast_retries, history, make_api_client, wait_until

FAST_RETRIES = fast_retries("0.3", "1", max_attempts="5")


def test_two_processes_drain_1000_notifications_each_sent_exactly_once(start_dispatchers):
    ids = enqueue(1000)
    dispatchers = start_dispatchers("--processes", "2", "--threads", "8", "--batch-size", "50")
    wait_until(lambda: count("sent") == 1000, timeout=60, message="1000 sent")
    assert OutboxEntry.objects.count() == 0
    sent_events = NotificationEvent.objects.filter(status="sent")
    per_notification = Counter(str(n) for n in sent_events.values_list("notification_id", flat=True))
    assert set(per_notification) == set(ids) and set(per_notification.values()) == {1}
    assert sent_events.values("provider_message_id").distinct().count() == 1000
    assert set(Notification.objects.values_list("attempts", flat=True)) == {1}
    # both processes took part
    assert sent_events.values("dispatcher").distinct().count() == 2
    dispatchers.signal(signal.SIGTERM)
    assert dispatchers.wait() == 0


def test_new_work_wakes_an_idle_dispatcher_by_notify_not_by_polling(start_dispatchers):
    client = make_api_client()
    dispatchers = start_dispatchers("--processes", "1", env={"OUTBOX_POLL_INTERVAL_SECONDS": "60"})
    wait_until(lambda: "started:" in dispatchers.log(), message="dispatcher start")
    time.sleep(1.5)  # its first look for work (at start) is over; now only a NOTIFY can wake it
    response = client.post("/api/v1/notifications", {"channel": "fake", "to": "x", "message": "hi"}, format="json")
    assert response.status_code == 202
    nid = response.json()["id"]
    # With a 60 s poll interval, being sent within seconds proves the LISTEN/NOTIFY wake-up.
    wait_until(lambda: Notification.objects.get(pk=nid).status == "sent", timeout=10, message="sent by notify")


def test_a_backlog_drains_claim_after_claim_without_waiting_for_the_poll_interval(start_dispatchers):
    # The end of a lane's sends must wake the claim loop. It was woken only when the lane's
    # in-flight count equalled exactly half of what it may have started, a figure that moves
    # as the lane learns its send times and is bounded by its lease: with a 5 s lease its
    # sends ended without waking it, and each claim waited for the poll interval (here 60 s)
    # instead of the sends' end. The cluster run found it (a drain of 1,000/s instead of 5,000).
    enqueue(2000)
    dispatchers = start_dispatchers("--processes", "1", "--threads", "16", "--batch-size", "100",
                                    "--lease-seconds", "5", env={"OUTBOX_POLL_INTERVAL_SECONDS": "60"})
    wait_until(lambda: count("sent") == 2000, timeout=30, message="2000 sent well within one poll interval")
    dispatchers.signal(signal.SIGTERM)
    assert dispatchers.wait() == 0


@pytest.mark.slow  # about 9 s: the victim's 5 s lease must run out
def test_sigkilled_dispatcher_loses_nothing_its_rows_are_sent_by_another_after_the_lease(start_dispatchers, channels_file):
    slow = fake_channel(channels_file, latency_ms=3000)
    ids = enqueue(6)
    victim = start_dispatchers("--processes", "1", "--threads", "6", "--lease-seconds", "5", channels_file=slow)
    wait_until(lambda: count("sending") == 6, message="all six claimed by the victim")
    victim.kill_all()  # SIGKILL mid-batch: supervisor and dispatcher, no chance to record anything
    killed_at = time.monotonic()
    assert count("sent") == 0

    rescuer = start_dispatchers("--processes", "1", "--threads", "6", "--lease-seconds", "5", channels_file=slow)
    wait_until(lambda: count("sent") == 6, timeout=40, message="rescued sends")
    # Not before the victim's lease ran out (5 s from its claim, which preceded the kill).
    assert time.monotonic() - killed_at >= 5 - 1
    for nid in ids:
        assert [(e.status, e.attempt) for e in history(nid)] == [("queued", 0), ("retrying", 1), ("sent", 2)]
        expired = history(nid)[1]
        assert "lease expired" in expired.error and expired.dispatcher.split(":")[1] != ""
    assert OutboxEntry.objects.count() == 0
    rescuer.signal(signal.SIGTERM)
    assert rescuer.wait() == 0


def test_supervisor_replaces_a_dispatcher_process_that_dies(start_dispatchers):
    dispatchers = start_dispatchers("--processes", "2")
    (first, second) = wait_until(lambda: len(dispatchers.children()) == 2 and dispatchers.children(), message="2 children")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(dispatchers.children()) == 2 and first not in dispatchers.children(), timeout=10,
               message="a replacement process")
    assert "replacing it" in dispatchers.log()
    enqueue(50)
    wait_until(lambda: count("sent") == 50, message="work continues after the replacement")


def test_transient_failures_are_retried_with_backoff_until_sent(start_dispatchers, channels_file):
    flaky = fake_channel(channels_file, fail_first_attempts=2)
    (nid,) = enqueue(1)
    start_dispatchers("--processes", "1", channels_file=flaky, env=FAST_RETRIES)
    wait_until(lambda: Notification.objects.get(pk=nid).status == "sent", message="sent on the third attempt")
    events = history(nid)
    assert [(e.status, e.attempt) for e in events] == [("queued", 0), ("retrying", 1), ("retrying", 2), ("sent", 3)]
    for attempt, (retry, following) in enumerate(zip(events[1:3], events[2:4]), start=1):
        assert "transient" in retry.error
        ceiling = min(1.0, 0.3 * 2 ** (attempt - 1))
        # the next attempt was scheduled within the backoff's ceiling ...
        assert 0 <= (retry.next_attempt_at - retry.created_at).total_seconds() <= ceiling + 0.01
        # ... and was not made before it was due
        assert following.created_at >= retry.next_attempt_at
    assert Notification.objects.get(pk=nid).attempts == 3


def test_retry_after_from_the_provider_delays_the_next_attempt(start_dispatchers, channels_file):
    flaky = fake_channel(channels_file, fail_first_attempts=1, retry_after=2)
    (nid,) = enqueue(1)
    start_dispatchers("--processes", "1", channels_file=flaky, env=FAST_RETRIES)
    wait_until(lambda: Notification.objects.get(pk=nid).status == "sent", message="sent after Retry-After")
    queued, retry, sent = history(nid)
    assert (retry.next_attempt_at - retry.created_at).total_seconds() >= 2
    assert (sent.created_at - retry.created_at).total_seconds() >= 2


def test_permanent_failure_is_failed_after_one_attempt(start_dispatchers, channels_file):
    broken = fake_channel(channels_file, permanent_rate=1.0)
    ids = enqueue(5)
    start_dispatchers("--processes", "1", channels_file=broken, env=FAST_RETRIES)
    wait_until(lambda: count("failed") == 5, message="5 failed")
    for nid in ids:
        assert [(e.status, e.attempt) for e in history(nid)] == [("queued", 0), ("failed", 1)]
        assert "permanent" in Notification.objects.get(pk=nid).last_error
    assert OutboxEntry.objects.count() == 0


def test_transient_failures_stop_at_max_attempts(start_dispatchers, channels_file):
    down = fake_channel(channels_file, transient_rate=1.0)
    (nid,) = enqueue(1)
    start_dispatchers("--processes", "1", channels_file=down, env={**FAST_RETRIES, "OUTBOX_MAX_ATTEMPTS": "3"})
    wait_until(lambda: Notification.objects.get(pk=nid).status == "failed", message="failed after 3 attempts")
    assert [(e.status, e.attempt) for e in history(nid)] == [("queued", 0), ("retrying", 1), ("retrying", 2), ("failed", 3)]
    notification = Notification.objects.get(pk=nid)
    assert notification.attempts == 3 and notification.last_error.startswith("gave up after 3 attempts")
    assert OutboxEntry.objects.count() == 0


def test_an_unexpected_exception_in_a_channel_fails_at_once_and_the_dispatcher_keeps_running(start_dispatchers, channels_file):
    # Not a network failure: the same message would raise it again, so it is not retried.
    buggy = channels_file(
        '[channels.buggy]\nbackend = "tests.channel_backends.ExplodingChannel"\noptions = { explode_attempts = 1 }\n'
    )
    ids = enqueue(3, channel="buggy")
    dispatchers = start_dispatchers("--processes", "1", channels_file=buggy, env=FAST_RETRIES)
    wait_until(lambda: count("failed") == 3, message="failed at the bug's first attempt")
    for nid in ids:
        assert [e.status for e in history(nid)] == ["queued", "failed"]
        assert "unexpected KeyError" in history(nid)[1].error
    assert dispatchers.popen.poll() is None and len(dispatchers.children()) == 1


def test_sigterm_finishes_in_flight_sends_records_them_and_exits_0(start_dispatchers, channels_file):
    slow = fake_channel(channels_file, latency_ms=1500)
    enqueue(4)
    dispatchers = start_dispatchers("--processes", "1", "--threads", "4", "--batch-size", "4", channels_file=slow)
    wait_until(lambda: count("sending") == 4, message="4 in flight")
    dispatchers.signal(signal.SIGTERM)
    time.sleep(0.3)
    more = enqueue(4)  # arrive after the stop: must stay queued
    assert dispatchers.wait(timeout=30) == 0
    assert count("sent") == 4
    assert count("sending") == 0
    assert all(Notification.objects.get(pk=nid).status == "queued" for nid in more)
    assert OutboxEntry.objects.filter(locked_by__isnull=False).count() == 0
    assert "finishing in-flight sends" in dispatchers.log()
