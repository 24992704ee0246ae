"""The fleet's policy for a channel (channels.policy), enforced by real dispatcher processes
through PostgreSQL (outbox/sql.py: CLAIM charges channel_state, CHANNEL_OUTCOMES updates it):
a rate budget that several processes share, a provider's Retry-After that pauses the channel,
and a circuit breaker that stops sends to a failing provider and probes it after a while.

Times are read from the database (sent_at, the events' created_at); bounds are generous.
"""

from __future__ import annotations

from django.db import connection

from notifications.models import Notification, NotificationEvent
from outbox.models import ChannelState
from tests.helpers import enqueue, fast_retries, wait_until, wait_until_settled


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
    # A full bucket (10) at once, then 10 a second: the last one no sooner than 3 s after the first.
    assert times[-1] - times[0] >= 2.7, times[-1] - times[0]
    most_in_a_second = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert most_in_a_second <= 10 + 10 + 1, most_in_a_second  # the burst and a second's refill
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
    wait_until_settled(ids, "all sent once the probe succeeded", timeout=40)
    log = dispatchers.log()
    assert "circuit breaker closed -> open after 3 consecutive transient failures" in log, log[-3000:]
    assert "circuit breaker open -> half_open" in log and "circuit breaker half_open -> closed" in log
    with connection.cursor() as cursor:
        # No attempt ended while the breaker was open, before its cool-down ran out.
        cursor.execute("SELECT count(*) FROM notification_event WHERE status IN ('retrying', 'sent') "
                       "AND created_at > %s AND created_at < %s", [opened.changed_at, opened.breaker_until])
        assert cursor.fetchone()[0] <= 1  # at most the one send already in flight when it opened
    assert ChannelState.objects.get(channel="fake").breaker == "closed"
