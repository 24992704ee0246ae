"""The Apprise channel end to end: a real dispatcher process on the test database sends through
Apprise to loopback stand-ins of ntfy and Mattermost (tests/provider_standins/apprise.py) in
this process; the API checks recipients against the channel's pattern, lists the channel by its
service's name and counts it in the statistics, like any other channel."""

from __future__ import annotations

import pytest
from django.test import override_settings

from channels.config import load_channels_file
from notifications.models import Notification
from tests.helpers import enqueue_one, fast_retries, history, make_api_client, start_dispatcher, wait_until_settled
from tests.provider_standins import Reply, drop_proxy_variables
from tests.provider_standins.apprise import MATTERMOST_TOKEN, NTFY_PASSWORD, NTFY_USER, AppriseServices, ntfy_error

ENV = {"TEST_NTFY_PASSWORD": NTFY_PASSWORD, "TEST_MATTERMOST_TOKEN": MATTERMOST_TOKEN}


def channels_toml(services: AppriseServices) -> str:
    return f"""
[channels.ntfy]
backend = "channels.backends.apprise.AppriseChannel"
[channels.ntfy.options]
url = "ntfy://{NTFY_USER}:${{TEST_NTFY_PASSWORD}}@{services.host}/{{to}}"
recipient_pattern = '[a-z0-9_-]{{1,64}}'
timeout = 1.5

[channels.mattermost]
backend = "channels.backends.apprise.AppriseChannel"
[channels.mattermost.options]
url = "mmost://{services.host}/${{TEST_MATTERMOST_TOKEN}}?channel={{to}}"
format = "markdown"
"""


@pytest.fixture
def services(monkeypatch):
    drop_proxy_variables(monkeypatch)
    for name, value in ENV.items():  # for the channels this process builds (the API's)
        monkeypatch.setenv(name, value)
    with AppriseServices(ntfy_credentials=(NTFY_USER, NTFY_PASSWORD)) as running:
        yield running


def test_a_dispatcher_sends_through_apprise_fails_4xx_at_once_retries_5xx_and_cuts_a_hang(
        start_dispatchers, channels_file, services, admin_client):
    services.script("gone", ntfy_error(403, 40301, "forbidden"))
    services.script("busy", Reply(503, "upstream down"))
    services.script("hang", Reply(delay=20))  # once: the next attempt is answered at once
    ids = {to: enqueue_one("ntfy", to, f"message to {to}", subject=f"title {to}") for to in ("alerts", "gone", "busy", "hang")}
    ids["town"] = enqueue_one("mattermost", "town-square", "deploy **done**", subject="release")
    # LOG_LEVEL=DEBUG: every line anyone logs (urllib3 prints each request's path) is checked below.
    dispatcher = start_dispatcher(start_dispatchers, channels_file, channels_toml(services),
                                  {**ENV, **fast_retries("0.2", "0.5"), "LOG_LEVEL": "DEBUG"})
    wait_until_settled(ids.values(), message="all five settled")

    ntfy = [r.json() for r in services.received if r.service == "ntfy"]
    assert {"topic": "alerts", "title": "title alerts", "message": "message to alerts"} in ntfy
    assert [(e.status, e.attempt) for e in history(ids["alerts"])] == [("queued", 0), ("sent", 1)]

    gone = Notification.objects.get(pk=ids["gone"])
    assert [(e.status, e.attempt) for e in history(ids["gone"])] == [("queued", 0), ("failed", 1)]
    assert "HTTP 403" in gone.last_error and NTFY_PASSWORD not in gone.last_error
    assert [r["topic"] for r in ntfy].count("gone") == 1

    queued, retry, sent = history(ids["busy"])
    assert (retry.status, retry.attempt, sent.status, sent.attempt) == ("retrying", 1, "sent", 2)
    assert "HTTP 503" in retry.error

    queued, retry, sent = history(ids["hang"])
    assert (retry.status, retry.attempt, sent.status, sent.attempt) == ("retrying", 1, "sent", 2)
    assert "did not answer within 1.5s" in retry.error

    (town,) = [r for r in services.received if r.service == "mattermost"]
    assert town.path == f"/hooks/{MATTERMOST_TOKEN}" and town.json()["channel"] == "town-square"
    assert "release" in town.json()["text"] and "deploy **done**" in town.json()["text"]
    assert [e.status for e in history(ids["town"])] == ["queued", "sent"]

    log = dispatcher.log()
    assert '"POST /hooks/[REDACTED] HTTP/1.1" 200' in log  # urllib3's debug line, redacted
    assert NTFY_PASSWORD not in log and MATTERMOST_TOKEN not in log

    # The statistics count the channels like any other: the API's and the admin's page.
    api = make_api_client("tests")
    hour = api.get("/api/v1/stats").json()["hour"]
    by_channel = {row["channel"]: row for row in hour["by_channel"]}
    assert by_channel["ntfy"]["total"] == 4
    assert (by_channel["ntfy"]["by_status"]["sent"], by_channel["ntfy"]["by_status"]["failed"]) == (3, 1)
    assert by_channel["mattermost"]["by_status"]["sent"] == 1
    (reason,) = [r for r in hour["top_failure_reasons"] if "ntfy" in r["channels"]]
    assert "HTTP 403" in reason["reason"] and NTFY_PASSWORD not in reason["reason"]
    page = admin_client.get("/admin/notifications/notification/stats/")
    assert page.status_code == 200 and b"mattermost" in page.content and b"ntfy" in page.content


def test_the_api_checks_the_recipient_pattern_and_lists_the_service_by_name_only(db, channels_file, services):
    configured = load_channels_file(channels_file(channels_toml(services)))
    with override_settings(NOTIFICATION_CHANNELS=configured):
        api = make_api_client("tests")
        for to in ("Not A Topic", "alerts/other", ""):
            response = api.post("/api/v1/notifications", {"channel": "ntfy", "to": to, "message": "x"}, format="json")
            assert response.status_code == 400, response.content
            assert set(response.json()["error"]["fields"]) == {"to"}
        accepted = api.post("/api/v1/notifications", {"channel": "ntfy", "to": "alerts", "subject": "db1",
                                                      "message": "disk full"}, format="json")
        assert accepted.status_code == 202, accepted.content
        assert Notification.objects.get().recipient == "alerts"

        listed = api.get("/api/v1/channels")
        assert listed.status_code == 200
        channels = {c["name"]: c for c in listed.json()["channels"]}
        assert channels["ntfy"]["kind"] == "apprise" and channels["ntfy"]["service"] == "ntfy"
        assert channels["ntfy"]["backend"] == "channels.backends.apprise.AppriseChannel"
        assert channels["ntfy"]["recipient_pattern"] == "[a-z0-9_-]{1,64}"
        assert channels["mattermost"]["service"] == "Mattermost"
        for secret in (NTFY_PASSWORD, MATTERMOST_TOKEN, services.host):
            assert secret.encode() not in listed.content
