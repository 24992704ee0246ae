"""The fleet's policy for a channel (channels.policy), enforced by real dispatcher processes
through PostgreSQL (outbox/sql.py: CLAIM charges channel_state, CHANNEL_OUTCOMES updates it):
a rate budget that several processes share, a provider's Retry-After that pauses the channel,
and a circuit breaker that stops sends to a failing provider and probes it after a while.

Times are read from the database (sent_at, the events' created_at); bounds are generous.
"""

from __future__ import annotations

import re

from django.db import connection
from django.test import Client, override_settings

from channels.config import load_channels_file
from notifications.models import Notification, NotificationEvent
from outbox.models import ChannelState
from tests.helpers import enqueue, enqueue_one, fast_retries, make_api_client, wait_until, wait_until_settled


def fake_with(channels_file, options: str, policy: str):
    return channels_file(f'[channels.fake]\nbackend = "channels.backends.fake.FakeChannel"\n'
                         f"options = {{ {options} }}\n{policy}\n")


def sent_times(ids) -> list[float]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM sent_at)::float8 FROM notification "
                       "WHERE id = ANY(%s::uuid[]) ORDER BY sent_at", [list(ids)])
        return [row[0] for row in cursor.fetchall()]


def test_a_rate_budget_holds_for_the_whole_fleet_and_rows_over_it_wait_without_an_attempt(start_dispatchers, channels_file):
    path = fake_with(channels_file, "latency_ms = 0", 'rate_limit = "10/s"')
    ids = enqueue(40)
    # Two supervisors of two processes each, as two hosts would run them.
    for _ in range(2):
        start_dispatchers("--processes", "2", "--threads", "4", channels_file=path)
    wait_until_settled(ids, "40 sent at 10/s", timeout=30)
    times = sent_times(ids)
    # A full bucket (5) at once, then 10 a second: the last one no sooner than 3.5 s after the first.
    assert times[-1] - times[0] >= 3.2, times[-1] - times[0]
    most_in_a_second = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert most_in_a_second <= 5 + 10 + 1, most_in_a_second  # the burst and a second's refill
    # Waiting for the budget is not an attempt: every notification was sent at its first.
    assert set(Notification.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert not NotificationEvent.objects.filter(notification_id__in=ids, status="retrying").exists()


def test_a_retry_after_pauses_a_budgeted_channel_for_that_long(start_dispatchers, channels_file):
    path = fake_with(channels_file, "fail_first_attempts = 1, retry_after = 2", 'rate_limit = "100/s"')
    (first,) = enqueue(1)
    start_dispatchers("--processes", "1", channels_file=path, env=fast_retries("0.1", "0.2"))
    wait_until(lambda: NotificationEvent.objects.filter(notification_id=first, status="retrying").exists(),
               message="the first attempt answered with Retry-After: 2")
    paused_until = ChannelState.objects.get(channel="fake").paused_until
    later = enqueue(5)  # their first attempts would fail too, but none may start during the pause
    wait_until_settled([first, *later], "all sent after the pause", timeout=30)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notification_event WHERE notification_id = ANY(%s::uuid[]) "
                       "AND status = 'retrying' AND created_at < %s", [later, paused_until])
        assert cursor.fetchone()[0] == 0  # no attempt of theirs ended before the pause did


def test_a_circuit_breaker_opens_stops_the_sends_probes_after_its_cool_down_and_closes(start_dispatchers, channels_file):
    # The first 6 sends fail (the provider is down), every later one succeeds (it is back).
    path = fake_with(channels_file, "fail_first_sends = 6",
                     "circuit_breaker = { failures = 3, cool_down = 2 }")
    ids = enqueue(30)
    dispatchers = start_dispatchers("--processes", "1", "--threads", "1", "--batch-size", "1", channels_file=path,
                                    env={**fast_retries("0.05", "0.1"), "OUTBOX_POLL_INTERVAL_SECONDS": "0.1"})
    wait_until(lambda: ChannelState.objects.filter(channel="fake", breaker="open").exists(), message="the breaker opens")
    opened = ChannelState.objects.get(channel="fake")
    # The API (configured with the same channels file) and /metrics show it.
    with override_settings(NOTIFICATION_CHANNELS=load_channels_file(path)):
        (fake,) = [c for c in make_api_client().get("/api/v1/channels").json()["channels"] if c["name"] == "fake"]
    assert fake["circuit_breaker"] == {"failures": 3, "cool_down": 2.0}
    assert fake["state"]["circuit_breaker"] in ("open", "half_open")
    assert 'channel_circuit_breaker{channel="fake",state="closed"} 0.0' in Client().get("/metrics").content.decode()
    wait_until_settled(ids, "all sent once the probe succeeded", timeout=40)
    log = dispatchers.log()
    # (at 3 or more: a batch of outcomes may bring several at once)
    assert re.search(r"circuit breaker closed -> open after [3-9] consecutive transient failures", log), log[-3000:]
    assert "circuit breaker open -> half_open" in log and "circuit breaker half_open -> closed" in log
    with connection.cursor() as cursor:
        # No attempt ended while the breaker was open, before its cool-down ran out.
        cursor.execute("SELECT count(*) FROM notification_event WHERE status IN ('retrying', 'sent') "
                       "AND created_at > %s AND created_at < %s", [opened.changed_at, opened.breaker_until])
        assert cursor.fetchone()[0] <= 1  # at most the one send already in flight when it opened
    assert ChannelState.objects.get(channel="fake").breaker == "closed"


def test_a_notification_fails_over_after_transient_failures_and_never_on_a_permanent_one(start_dispatchers, channels_file):
    path = channels_file(
        '[channels.fake]\nbackend = "channels.backends.fake.FakeChannel"\noptions = { transient_rate = 1.0 }\n'
        'fallback = ["backup"]\n'
        '[channels.backup]\nbackend = "channels.backends.fake.FakeChannel"\n'
        '[channels.refusing]\nbackend = "channels.backends.fake.FakeChannel"\noptions = { permanent_rate = 1.0 }\n'
        'fallback = ["backup"]\n'
    )
    (moved,) = enqueue(1)
    (refused,) = enqueue(1, channel="refusing")
    start_dispatchers("--processes", "1", channels_file=path,
                      env={**fast_retries("0.05", "0.1"), "OUTBOX_FAILOVER_AFTER_ATTEMPTS": "2"})
    wait_until_settled([moved, refused], "the one sent through its fallback, the other refused")
    notification = Notification.objects.get(pk=moved)
    assert (notification.status, notification.channel, notification.attempts) == ("sent", "backup", 3)
    events = list(NotificationEvent.objects.filter(notification_id=moved).order_by("created_at", "id"))
    assert [(e.status, e.attempt, e.note) for e in events] == [
        ("queued", 0, ""), ("retrying", 1, ""), ("retrying", 2, "failed over to channel backup"), ("sent", 3, "")]
    # A permanent failure (an invalid recipient) would fail on any channel: it never fails over.
    refused_notification = Notification.objects.get(pk=refused)
    assert (refused_notification.status, refused_notification.channel) == ("failed", "refusing")


def test_rows_of_a_channel_whose_breaker_is_open_fail_over_at_once(start_dispatchers, channels_file):
    path = channels_file(
        '[channels.fake]\nbackend = "channels.backends.fake.FakeChannel"\noptions = { transient_rate = 1.0 }\n'
        'circuit_breaker = { failures = 2, cool_down = 60 }\nfallback = ["backup"]\n'
        '[channels.backup]\nbackend = "channels.backends.fake.FakeChannel"\n'
    )
    first = enqueue(2)
    start_dispatchers("--processes", "1", "--threads", "1", channels_file=path,
                      env={**fast_retries("5", "5"), "OUTBOX_FAILOVER_AFTER_ATTEMPTS": "10",
                           "OUTBOX_POLL_INTERVAL_SECONDS": "0.2"})
    wait_until(lambda: ChannelState.objects.filter(channel="fake", breaker="open").exists(), message="the breaker opens")
    later = enqueue(3)  # never tried on `fake`: its breaker is open for a minute
    wait_until_settled(later, "sent through the fallback", timeout=20)
    for nid in later:
        notification = Notification.objects.get(pk=nid)
        assert (notification.status, notification.channel, notification.attempts) == ("sent", "backup", 1)
        assert NotificationEvent.objects.filter(
            notification_id=nid, note__contains="the circuit breaker of fake is open").exists()
    # The first two, waiting out their backoff on `fake`, move too once due.
    wait_until_settled(first, "the first two sent through the fallback", timeout=20)
    assert set(Notification.objects.filter(pk__in=first).values_list("channel", flat=True)) == {"backup"}


def test_a_recipient_rate_limit_spaces_one_recipients_burst_without_delaying_the_others(start_dispatchers, channels_file):
    path = fake_with(channels_file, "latency_ms = 0", 'recipient_rate_limit = "1/s"')
    busy = [enqueue_one("fake", "busy@example.com", f"burst {i}") for i in range(4)]
    others = enqueue(20)  # 20 other recipients, queued after the burst
    start_dispatchers("--processes", "2", "--threads", "4", channels_file=path)
    wait_until_settled(others, "the other recipients' notifications", timeout=10)
    wait_until_settled(busy, "the busy recipient's burst, at 1/s", timeout=20)
    busy_times, other_times = sent_times(busy), sent_times(others)
    # The others went out at once, while the burst still had seconds to go.
    assert max(other_times) < busy_times[-1] - 1.0
    # The burst, one a second (a bucket of one), by two dispatcher processes together.
    gaps = [b - a for a, b in zip(busy_times, busy_times[1:])]
    assert min(gaps) >= 0.9, gaps
    assert set(Notification.objects.filter(pk__in=busy).values_list("attempts", flat=True)) == {1}
