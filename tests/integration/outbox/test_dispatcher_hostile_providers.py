"""Hostile providers against real dispatcher processes: what a user saw before, and what must
hold now. Each provider is a loopback server in this process; the dispatchers are
`run_dispatchers` processes on the test database.

- An answer no database could store (a lone surrogate, a NUL) costs nothing to the
  notifications after it: each is sent once, the poisoned one with a safe id.
- A provider that drips its answer is given up at the send's deadline, every attempt counts,
  and after OUTBOX_MAX_ATTEMPTS the notification is failed; another channel beside it keeps
  sending meanwhile.
- A dispatcher that cannot record outcomes claims nothing and says so in its heartbeat and
  metrics, then recovers.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from notifications.models import Notification
from outbox.models import Dispatcher
from tests.helpers import (
    database_url,
    enqueue,
    enqueue_one,
    fast_retries,
    free_port,
    history,
    http_get,
    status_of,
    wait_until,
    wait_until_settled,
)
from tests.provider_standins import HostileServer
from tests.provider_standins.webhook import Receiver

FAST_RETRIES = fast_retries("0.1", "0.2")


def webhook_channels(**channels: dict[str, str]) -> str:
    """A channels TOML of webhook channels, each {target: url}, with a 1 s deadline."""
    text = ""
    for name, targets in channels.items():
        rendered = ", ".join(f'{key} = "{url}"' for key, url in targets.items())
        text += (f'[channels.{name}]\nbackend = "channels.backends.webhook.WebhookChannel"\n'
                 f'options = {{ secret = "s3cret", allow_private_targets = true, timeout = 1, targets = {{ {rendered} }} }}\n')
    return text


def deliveries(log: str) -> list[dict]:
    """The dispatchers' per-attempt log records (LOG_FORMAT=json)."""
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [e for e in entries if e["message"].startswith("delivery ")]


def test_an_answer_no_database_could_store_costs_nothing_to_the_notifications_after_it(start_dispatchers, channels_file):
    poison = b'{"id": "\\ud800a\\u0000b"}'
    with HostileServer("raw", body=poison) as hostile, Receiver(secret="s3cret") as receiver:
        path = channels_file(webhook_channels(webhook={"poison": hostile.url, "ops": receiver.url}))
        poisoned = enqueue_one("webhook", "poison", "first")
        ordinary = [enqueue_one("webhook", "ops", f"after {i}") for i in range(5)]
        start_dispatchers("--processes", "1", channels_file=path, env=FAST_RETRIES)
        wait_until_settled([poisoned, *ordinary], "all six sent or failed")
        assert hostile.connections == 1 and len(receiver.received) == 5  # each sent once
    assert {status_of(nid) for nid in [poisoned, *ordinary]} == {"sent"}, [(e.status, e.error) for nid in [poisoned, *ordinary] for e in history(nid)]
    assert Notification.objects.get(pk=poisoned).provider_message_id == "\ufffda b"
    assert [e.status for e in history(poisoned)] == ["queued", "sent"]


@pytest.mark.slow  # about 5 s: three attempts, each given up at the 1 s deadline
def test_a_provider_that_drips_is_given_up_at_the_deadline_and_attempts_stop_at_the_cap(start_dispatchers, channels_file):
    with HostileServer("drip", drip_seconds=0.5) as drip, Receiver(secret="s3cret") as receiver:
        path = channels_file(webhook_channels(slow={"drip": drip.url}, hooks={"ops": receiver.url}))
        dripped = enqueue_one("slow", "drip", "never answered")
        dispatchers = start_dispatchers(
            "--processes", "1", "--threads", "2", "--lease-seconds", "5", channels_file=path,
            env={**FAST_RETRIES, "OUTBOX_MAX_ATTEMPTS": "3", "LOG_FORMAT": "json"},
        )
        wait_until(lambda: status_of(dripped) == "sending", message="the first attempt started")
        # Meanwhile, another channel sends at once: the drip holds only its own channel's threads.
        started = time.monotonic()
        others = [enqueue_one("hooks", "ops", f"beside {i}") for i in range(20)]
        wait_until_settled(others, "the other channel's notifications", timeout=10)
        others_took = time.monotonic() - started
        wait_until(lambda: status_of(dripped) in ("sent", "failed"), timeout=20, message="given up after 3 attempts")
        assert drip.connections == 3  # one request per attempt, none after the cap
    assert others_took < 1.0, others_took
    assert {status_of(nid) for nid in others} == {"sent"}
    notification = Notification.objects.get(pk=dripped)
    assert notification.attempts == 3
    assert notification.last_error.startswith("gave up after 3 attempts: the provider did not answer within 1s")
    assert [(e.status, e.attempt) for e in history(dripped)] == [
        ("queued", 0), ("retrying", 1), ("retrying", 2), ("failed", 3)]
    attempts = [e for e in deliveries(dispatchers.log()) if e["channel"] == "slow"]
    assert len(attempts) == 3 and all(e["duration_ms"] <= 1000 + 1000 for e in attempts), attempts


@pytest.mark.slow  # about 5 s: the outage lasts several poll intervals
def test_a_dispatcher_that_cannot_record_claims_nothing_and_says_so_then_recovers(start_dispatchers, channels_file):
    slow = channels_file('[channels.fake]\nbackend = "channels.backends.fake.FakeChannel"\noptions = { latency_ms = 1000 }\n')
    port = free_port()
    dispatchers = start_dispatchers(
        "--processes", "1", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", channels_file=slow,
        # Every statement of the dispatcher waits at most 300 ms for a row lock: the test's
        # lock below then makes its outcome's record fail as a database outage would.
        env={"PGOPTIONS": "-c lock_timeout=300", "OUTBOX_HEARTBEAT_SECONDS": "0.3"},
    )
    (first,) = enqueue(1)
    wait_until(lambda: status_of(first) == "sending", message="the send started")
    # Another session locks the notification's row: the record of its outcome must wait.
    with psycopg.connect(database_url()) as locker:
        locker.execute("SELECT 1 FROM notification WHERE id = %s FOR UPDATE", [first])
        row = wait_until(lambda: Dispatcher.objects.exclude(problem="").first(), timeout=15,
                         message="the heartbeat says outcomes cannot be recorded")
        assert row.problem.startswith("cannot record outcomes")
        assert "dispatchers_cannot_record 1.0" in scrape(port)
        (second,) = enqueue(1)
        time.sleep(1.5)  # several poll intervals
        assert status_of(second) == "queued" and status_of(first) == "sending"  # nothing claimed
        locker.rollback()
    wait_until(lambda: status_of(first) == "sent", timeout=15, message="recorded once the lock is gone")
    wait_until(lambda: status_of(second) == "sent", timeout=15, message="claims again")
    wait_until(lambda: not Dispatcher.objects.exclude(problem="").exists(), timeout=5, message="the problem cleared")
    assert "dispatchers_cannot_record 0.0" in scrape(port)
    assert "claiming nothing until outcomes are recorded again" in dispatchers.log()


def scrape(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics")
