"""Prometheus metrics: the API's /metrics (accepted notifications, outbox gauges), the
dispatchers' --metrics-port, and the multiprocess directory shared by gunicorn workers and
dispatchers as `make run` sets it up."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from notifications.auth import api_key_create
from outbox.models import OutboxEntry
from tests.helpers import (
    count,
    enqueue,
    fake_channel,
    fast_retries,
    free_port,
    http_get,
    make_api_client,
    tenant,
    wait_until,
)

FAST_RETRIES = fast_retries("0.3", "1", max_attempts="5")


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of an exposition (which must parse)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


# --- the API's /metrics ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_count_accepted_notifications_per_channel_but_not_replays(client):
    api = make_api_client()
    before = scrape(client)  # no API key needed
    for _ in range(3):
        assert api.post("/api/v1/notifications", {"channel": "fake", "to": "x", "message": "hi"}, format="json").status_code == 202
    batch = {"notifications": [{"channel": "email-log", "to": f"u{i}@example.com", "message": "hi"} for i in range(2)]}
    assert api.post("/api/v1/notifications/batch", batch, format="json").status_code == 202
    for _ in range(2):  # the second is a replay: nothing new is accepted
        api.post("/api/v1/notifications", {"channel": "sms-log", "to": "+14155550100", "message": "hi"},
                 format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert api.post("/api/v1/notifications", {"channel": "nope", "to": "x", "message": "hi"}, format="json").status_code == 400

    after = scrape(client)
    delta = {ch: value(after, "notifications_accepted_total", channel=ch)
             - value(before, "notifications_accepted_total", channel=ch) for ch in ("fake", "email-log", "sms-log", "nope")}
    assert delta == {"fake": 3, "email-log": 2, "sms-log": 1, "nope": 0}


@pytest.mark.django_db
def test_outbox_gauges_reflect_the_outbox(client):
    text = scrape(client)
    assert value(text, "outbox_pending") == 0 and value(text, "outbox_oldest_due_age_seconds") == 0

    due = enqueue(3)
    enqueue(2, send_at=timezone.now() + timedelta(hours=1))  # scheduled: pending, not due
    text = scrape(client)
    assert value(text, "outbox_pending") == 5
    assert 0 <= value(text, "outbox_oldest_due_age_seconds") < 5

    OutboxEntry.objects.filter(notification_id=due[0]).update(run_at=timezone.now() - timedelta(seconds=120))
    age = value(scrape(client), "outbox_oldest_due_age_seconds")
    assert 120 <= age < 130

    # A row leased to a dispatcher (run_at = its lease's end) is not due.
    OutboxEntry.objects.filter(notification_id__in=due).update(run_at=timezone.now() + timedelta(seconds=60))
    text = scrape(client)
    assert value(text, "outbox_pending") == 5 and value(text, "outbox_oldest_due_age_seconds") == 0


@pytest.mark.django_db
def test_metrics_speaks_openmetrics_when_asked(client):
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


# --- dispatchers ----------------------------------------------------------------------------------


def test_dispatchers_serve_their_metrics_on_the_metrics_port(start_dispatchers, channels_file, monkeypatch):
    flaky = fake_channel(channels_file, fail_first_attempts=1)  # each one: a retry, then sent
    port = free_port()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # the supervisor makes its own
    dispatchers = start_dispatchers("--processes", "2", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1",
                                    channels_file=flaky, env=FAST_RETRIES)
    enqueue(10)
    wait_until(lambda: count("sent") == 10, message="10 sent")

    text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert value(text, "deliveries_total", channel="fake", outcome="sent") == 10
    assert value(text, "deliveries_total", channel="fake", outcome="retrying") == 10
    assert value(text, "retries_total", channel="fake") == 10
    assert value(text, "send_duration_seconds_count", channel="fake") == 20
    assert value(text, "send_duration_seconds_bucket", channel="fake", le="+Inf") == 20

    # A dispatcher process that dies is replaced; what it counted stays in the totals.
    victim = dispatchers.children()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(dispatchers.children()) == 2 and victim not in dispatchers.children(), message="replaced")
    assert value(http_get(f"http://127.0.0.1:{port}/metrics"), "deliveries_total", channel="fake", outcome="sent") == 10

    dispatchers.signal(signal.SIGTERM)
    assert dispatchers.wait() == 0
    with pytest.raises(OSError):  # the port is closed with the supervisor
        http_get(f"http://127.0.0.1:{port}/metrics")


def test_a_taken_metrics_port_is_a_clear_error(start_dispatchers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dispatchers = start_dispatchers("--processes", "1", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
        assert dispatchers.wait() != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}" in dispatchers.log()


# --- one host, as `make run` runs it ---------------------------------------------------------------


def test_one_host_metrics_cover_api_workers_and_dispatchers(start_api, start_dispatchers, tmp_path):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    api = start_api(env=env, workers=2)
    base = api.url
    start_dispatchers("--processes", "1", env=env)
    _, key = api_key_create(client=tenant())

    for i in range(6):  # spread over both workers by the kernel
        request = urllib.request.Request(
            f"{base}/api/v1/notifications", method="POST",
            data=json.dumps({"channel": "fake", "to": "x", "message": f"hi {i}"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
    wait_until(lambda: count("sent") == 6, message="6 sent")

    text = http_get(f"{base}/metrics")
    assert value(text, "notifications_accepted_total", channel="fake") == 6
    assert value(text, "deliveries_total", channel="fake", outcome="sent") == 6
    assert value(text, "outbox_pending") == 0
    assert len(list(shared.glob("counter_*.db"))) >= 2  # an API worker's and a dispatcher's, at least

    api_log = api.log()
    assert '"POST /api/v1/notifications HTTP/1.1" 202' in api_log  # the access log ...
    assert key not in api_log and key[4:] not in api_log  # ... never shows the Authorization header
