"""The Apprise channel (channels/backends/apprise.py) against loopback stand-ins of services
Apprise speaks to (tests/provider_standins/apprise.py: ntfy, Mattermost, Apprise's JSON) and
hostile servers, through the real apprise package and `Channel.deliver`."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from channels import deadline
from channels.backends.apprise import AppriseChannel
from channels.base import Message
from channels.errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError
from tests.helpers import free_port
from tests.provider_standins import HostileServer, Reply, drop_proxy_variables, failure
from tests.provider_standins.apprise import (
    MATTERMOST_TOKEN,
    NTFY_PASSWORD,
    NTFY_USER,
    AppriseServices,
    mattermost_error,
    ntfy_error,
)

TIMEOUT = 1.0
WITHIN = TIMEOUT + 1.0  # the deadline, plus the second a send may take past it
JSON_PASSWORD = "json-pass-51c0ffee"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    drop_proxy_variables(monkeypatch)


@pytest.fixture
def services():
    with AppriseServices(ntfy_credentials=(NTFY_USER, NTFY_PASSWORD)) as running:
        yield running


def ntfy(services: AppriseServices, **options) -> AppriseChannel:
    url = f"ntfy://{NTFY_USER}:{NTFY_PASSWORD}@{services.host}/{{to}}"
    return AppriseChannel("ntfy", url=url, **{"timeout": TIMEOUT, **options})


def message(to: str = "alerts", body: str = "disk full on db1", subject: str = "db1") -> Message:
    return Message(recipient=to, body=body, subject=subject, notification_id="n-1")


def deliver_timed(channel: AppriseChannel, msg: Message):
    """What `deliver` did and how long it took: ("sent", id) or (the error)."""
    started = time.monotonic()
    try:
        outcome = ("sent", channel.deliver(msg))
    except (TransientChannelError, PermanentChannelError) as exc:
        outcome = exc
    return outcome, time.monotonic() - started


# --- a message arrives, with its title and body -----------------------------------------------


def test_ntfy_gets_the_message_with_its_title_body_topic_and_credentials(services):
    assert ntfy(services).deliver(message("alerts")) == ""  # Apprise gives no provider id
    (received,) = services.received
    assert received.service == "ntfy"
    assert received.json() == {"topic": "alerts", "title": "db1", "message": "disk full on db1"}
    assert received.basic_auth() == (NTFY_USER, NTFY_PASSWORD)  # ${VAR} secrets reach the service


def test_mattermost_gets_the_message_through_its_incoming_webhook(services):
    channel = AppriseChannel("mattermost", url=f"mmost://{services.host}/{MATTERMOST_TOKEN}?channel={{to}}", timeout=TIMEOUT)
    assert channel.deliver(message("town-square", body="deploy done", subject="release 4.2")) == ""
    (received,) = services.received
    assert received.path == f"/hooks/{MATTERMOST_TOKEN}"
    payload = received.json()
    # Mattermost has no title: Apprise puts it on the body's first line.
    assert payload["text"] == "release 4.2\r\ndeploy done"
    assert payload["channel"] == "town-square"


def test_apprise_json_gets_title_body_and_basic_auth_and_markdown_stays_markdown(services):
    channel = AppriseChannel("json", url=f"json://relay:{JSON_PASSWORD}@{services.host}/inbox", format="markdown",
                             timeout=TIMEOUT)
    assert channel.deliver(message("anyone", body="**disk** full", subject="db1")) == ""
    (received,) = services.received
    assert received.path == "/inbox"
    assert received.basic_auth() == ("relay", JSON_PASSWORD)
    payload = received.json()
    assert (payload["title"], payload["message"], payload["type"]) == ("db1", "**disk** full", "info")


def test_named_targets_reach_each_its_own_service(services):
    channel = AppriseChannel("chat", targets={
        "ops": f"ntfy://{NTFY_USER}:{NTFY_PASSWORD}@{services.host}/ops-topic",
        "team": f"mmost://{services.host}/{MATTERMOST_TOKEN}",
    }, timeout=TIMEOUT)
    channel.deliver(message("ops"))
    channel.deliver(message("team"))
    ops, team = services.received
    assert ops.json()["topic"] == "ops-topic" and team.path == f"/hooks/{MATTERMOST_TOKEN}"
    assert channel.describe()["targets"] == {"ops": "ntfy", "team": "Mattermost"}


# --- outcomes: 4xx at once, 408/429/5xx retried, no retry inside Apprise ----------------------


@pytest.mark.parametrize("reply, status", [
    (ntfy_error(400, 40007, "invalid request: message too large"), 400),
    (ntfy_error(403, 40301, "forbidden"), 403),
    (ntfy_error(404, 40401, "page not found"), 404),
    (ntfy_error(413, 41301, "limit reached: message too large"), 413),
    (Reply(410, "gone"), 410),  # no ntfy JSON: the plain HTTP status
])
def test_a_4xx_fails_at_once_and_apprise_does_not_retry_it(services, reply, status):
    services.script("alerts", reply)
    error = failure(ntfy(services), message("alerts"), PermanentChannelError)
    assert error.status == status
    assert f"ntfy answered HTTP {status}" in str(error)
    assert len(services.received) == 1


@pytest.mark.parametrize("reply, status", [
    (ntfy_error(429, 42901, "limit reached: too many requests"), 429),
    (ntfy_error(408, 40801, "request timeout"), 408),
    (ntfy_error(500, 50001, "internal server error"), 500),
    (Reply(502, "<html>bad gateway</html>"), 502),
    (Reply(503, "upstream down"), 503),
])
def test_408_429_and_5xx_are_transient_and_apprise_does_not_retry_them(services, reply, status):
    services.script("alerts", reply)
    error = failure(ntfy(services), message("alerts"), TransientChannelError)
    assert error.status == status
    assert len(services.received) == 1  # once: the dispatcher, not Apprise, tries again


def test_a_5xx_then_success_is_sent_on_the_next_attempt(services):
    channel = ntfy(services)
    services.script("alerts", Reply(503, "upstream down"))
    failure(channel, message("alerts"), TransientChannelError)
    assert channel.deliver(message("alerts")) == ""
    assert len(services.received) == 2


def test_wrong_credentials_are_permanent(services):
    channel = AppriseChannel("ntfy", url=f"ntfy://{NTFY_USER}:wrong-password-1@{services.host}/{{to}}", timeout=TIMEOUT)
    error = failure(channel, message("alerts"), PermanentChannelError)
    assert error.status == 401
    assert "wrong-password-1" not in str(error)


def test_an_unknown_mattermost_webhook_is_permanent_and_its_token_is_not_shown(services):
    token = "0" * 32
    channel = AppriseChannel("mattermost", url=f"mmost://{services.host}/{token}", timeout=TIMEOUT)
    error = failure(channel, message("any"), PermanentChannelError)
    assert error.status == 400 and token not in str(error)


def test_mattermost_5xx_is_transient(services):
    services.script(MATTERMOST_TOKEN, mattermost_error(500, "We encountered an error."))
    channel = AppriseChannel("mattermost", url=f"mmost://{services.host}/{MATTERMOST_TOKEN}", timeout=TIMEOUT)
    assert failure(channel, message("any"), TransientChannelError).status == 500


def test_nothing_listening_is_transient_without_a_status():
    channel = AppriseChannel("ntfy", url=f"ntfy://127.0.0.1:{free_port()}/{{to}}", timeout=TIMEOUT)
    error = failure(channel, message("alerts"), TransientChannelError)
    assert error.status is None
    assert "ntfy" in str(error)


# --- the deadline: a hanging service is cut at it ---------------------------------------------


@pytest.mark.parametrize("answer", ["silent", "drip", "huge_headers"])
def test_a_hanging_service_is_cut_at_the_deadline_and_its_call_ends(answer):
    lingering = deadline._lingering.count
    with HostileServer(answer, drip_seconds=0.2) as server:
        channel = AppriseChannel("ntfy", url=f"ntfy://127.0.0.1:{server.port}/{{to}}", timeout=TIMEOUT)
        outcome, took = deliver_timed(channel, message("alerts"))
        assert isinstance(outcome, TransientChannelError), outcome
        assert took < WITHIN
        assert server.connections == 1  # one request: no retry inside Apprise
    if answer != "huge_headers":  # (that one is refused by its size, before the deadline)
        assert "did not answer within 1s" in str(outcome)
    # The abandoned call was cut off (its socket shut down): its thread ends at once.
    end = time.monotonic() + 2
    while deadline._lingering.count > lingering and time.monotonic() < end:
        time.sleep(0.05)
    assert deadline._lingering.count <= lingering


@pytest.mark.parametrize("answer, status", [("endless_body", 503), ("big_body", 500), ("endless_body", 200)])
def test_answers_that_never_end_or_are_too_large_end_by_the_deadline(answer, status):
    with HostileServer(answer, status=status, content_type="text/plain") as server:
        channel = AppriseChannel("ntfy", url=f"ntfy://127.0.0.1:{server.port}/{{to}}", timeout=TIMEOUT)
        outcome, took = deliver_timed(channel, message("alerts"))
    # A 2xx whose body cannot be read is retried (at least once): several Apprise services
    # answer refusals with HTTP 200 too, so the channel does not count a 2xx alone as taken.
    assert isinstance(outcome, TransientChannelError), outcome
    assert took < WITHIN


def test_error_texts_with_nul_surrogates_and_megabytes_come_out_safe_and_bounded():
    text = "\ud800 refused \u0000 \u202e" + "z" * 500_000
    body = json.dumps({"code": 50001, "http": 500, "error": text}).encode()
    with HostileServer("raw", status=500, body=body) as server:
        channel = AppriseChannel("ntfy", url=f"ntfy://127.0.0.1:{server.port}/{{to}}", timeout=TIMEOUT)
        error = failure(channel, message("alerts"), TransientChannelError)
    text = str(error)
    assert "\x00" not in text and "\u202e" not in text and not any("\ud800" <= ch <= "\udfff" for ch in text)
    assert len(error.args[0]) <= 1000
    assert error.status == 500


@pytest.mark.slow  # 4.3 s: past Apprise's own 4 s read timeout
def test_the_sends_timeout_replaces_apprises_own_socket_timeouts(services):
    # Apprise's read timeout is 4 s unless the URL says otherwise: a service that answers in
    # 4.3 s is sent within a 6 s deadline.
    services.script("slow", Reply(delay=4.3))
    assert ntfy(services, timeout=6).deliver(message("slow")) == ""


def test_a_shorter_read_timeout_in_the_url_is_kept(services):
    services.script("slow", Reply(delay=1.5))
    channel = AppriseChannel("ntfy", url=f"ntfy://{NTFY_USER}:{NTFY_PASSWORD}@{services.host}/{{to}}?rto=0.3",
                             timeout=5)
    outcome, took = deliver_timed(channel, message("slow"))
    assert isinstance(outcome, TransientChannelError) and took < 1.2


def test_sends_on_many_threads_at_once_each_reach_their_own_recipient(services):
    channel = ntfy(services, timeout=5)
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            channel.deliver(message(f"topic-{i}", body=f"body {i}"))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert sorted((r.json()["topic"], r.json()["message"]) for r in services.received) == sorted(
        (f"topic-{i}", f"body {i}") for i in range(12))


# --- intake -----------------------------------------------------------------------------------


def test_the_recipient_pattern_is_checked_at_intake(services):
    channel = ntfy(services, recipient_pattern=r"[a-z0-9_-]{1,64}")
    assert channel.validate(message("alerts")).recipient == "alerts"
    with pytest.raises(InvalidMessage) as caught:
        channel.validate(message("Alerts!"))
    assert caught.value.field == "to" and "[a-z0-9_-]{1,64}" in caught.value.message


@pytest.mark.parametrize("to", ["alerts/other", "alerts other", "alerts,other", "alerts;other", "[alerts]", "a\\b"])
def test_a_recipient_that_apprise_would_split_into_several_targets_is_refused(services, to):
    channel = ntfy(services, recipient_pattern=".+")  # even where the pattern allows it
    with pytest.raises(InvalidMessage) as caught:
        channel.validate(message(to))
    assert caught.value.field == "to"
    # And at send (a message accepted before the rule): one target or nothing.
    failure(channel, message(to), PermanentChannelError)
    assert services.received == []


def test_with_targets_to_is_a_target_name(services):
    channel = AppriseChannel("chat", targets={"ops": f"ntfy://{services.host}/ops-topic"}, timeout=TIMEOUT)
    assert channel.validate(message("ops")).recipient == "ops"
    with pytest.raises(InvalidMessage) as caught:
        channel.validate(message("dev"))
    assert caught.value.field == "to" and "ops" in caught.value.message


# --- configuration: checked at start, secrets never printed ------------------------------------


SECRET = "s3cr3t-token-9f8e7d6c"


@pytest.mark.parametrize("options, expected", [
    ({"url": "nope://host/path"}, "Apprise knows no service nope://"),
    ({"url": f"ntfy-{SECRET}"}, "Apprise cannot parse the URL (a URL without a scheme)"),
    ({"url": f"https://example.com/{SECRET}"}, "Apprise cannot parse the URL (https://)"),
    ({"url": f"tgram://not-a-bot-token-{SECRET}/{{to}}"}, "Apprise cannot parse the URL (tgram://)"),
    ({"url": f"json://user:{SECRET}@127.0.0.1/?x={{to}}"}, "takes no recipient where {to} stands"),
    ({"url": f"discord://4174216298/{SECRET}/{{to}}"}, "the Discord service takes no recipient"),
    ({"url": f"ntfy://user:{SECRET}@127.0.0.1/{{to}}?retry=2"}, "remove retry= from the URL"),
    # The plugins' own refusals quote the value they refuse: redacted.
    ({"url": f"join://{SECRET}"}, "the Join service refuses the URL (join://): An invalid Join API Key ([REDACTED])"),
    ({"url": f"tgram://123456789:{SECRET}!/{{to}}"}, "the Telegram service refuses the URL (tgram://)"),
    ({"targets": {"ops": f"ntfy://user:{SECRET}@127.0.0.1/{{to}}"}}, "{to} has no place in a target"),
    ({"url": f"ntfy://user:{SECRET}@127.0.0.1/t", "targets": {"ops": "ntfy://127.0.0.1/t"}}, "not both"),
    ({}, "not neither"),
    ({"targets": {}}, "targets must be a table"),
    ({"url": "ntfy://127.0.0.1/{to}", "format": "html"}, "format must be one of ['markdown', 'text']"),
    ({"url": "ntfy://127.0.0.1/{to}", "recipient_pattern": "[a-z"}, "recipient_pattern is not a regular expression"),
    ({"url": ""}, "url must be an Apprise URL"),
])
def test_a_bad_configuration_fails_at_start_naming_the_channel_never_the_secret(options, expected):
    with pytest.raises(ChannelConfigurationError) as caught:
        AppriseChannel("chat-ops", **options)
    text = str(caught.value)
    assert text.startswith("channel 'chat-ops': ")
    assert expected in text
    assert SECRET not in text


def test_listing_shows_the_service_name_never_the_url(services):
    channel = ntfy(services)
    shown = channel.describe()
    assert shown["service"] == "ntfy" and shown["kind"] == "apprise"
    assert NTFY_PASSWORD not in json.dumps(shown) and services.host not in json.dumps(shown)
    assert channel.options == {}  # nothing of the URL is recorded as an option


def test_no_secret_reaches_a_log_or_an_error_text_whatever_apprise_logs(services, caplog):
    services.script("alerts", ntfy_error(403, 40301, "forbidden"), Reply(503, "down"))
    services.script(MATTERMOST_TOKEN, mattermost_error(404, "Unable to find the webhook."))
    mattermost = AppriseChannel("mattermost", url=f"mmost://{services.host}/{MATTERMOST_TOKEN}", timeout=TIMEOUT)
    json_channel = AppriseChannel("json", url=f"json://relay:{JSON_PASSWORD}@127.0.0.1:{free_port()}/inbox",
                                  timeout=TIMEOUT)
    errors = []
    with caplog.at_level(logging.DEBUG):  # everything anyone logs, Apprise's debug lines included
        channel = ntfy(services)
        for attempt in range(2):
            errors.append(failure(channel, message("alerts"), (PermanentChannelError, TransientChannelError)))
        errors.append(failure(mattermost, message("any"), PermanentChannelError))
        errors.append(failure(json_channel, message("any"), TransientChannelError))
    texts = [str(e) for e in errors] + [caplog.text] + [r.getMessage() for r in caplog.records]
    for secret in (NTFY_PASSWORD, MATTERMOST_TOKEN, JSON_PASSWORD):
        assert not any(secret in text for text in texts), secret
    # Apprise's own records stay in its per-call captures: none reached the root handlers.
    assert not [r for r in caplog.records if r.name.startswith("apprise")]
    assert "HTTP 404" in str(errors[2])


def test_an_error_that_quotes_the_url_is_redacted(services):
    # A plugin warning that prints the request URL (ntfy: "A Connection error occurred sending
    # ntfy:<url>") is redacted with the URL's secrets, here the password-bearing URL of a
    # service that is not listening.
    channel = AppriseChannel("json", url=f"json://relay:{JSON_PASSWORD}@127.0.0.1:{free_port()}/inbox", timeout=TIMEOUT)
    error = failure(channel, message("any"), TransientChannelError)
    assert JSON_PASSWORD not in str(error)


# --- the documented examples (docs/channels.md, README) build, with their services' names --------


@pytest.mark.parametrize("options, service", [
    ({"url": "https://prod-161.westeurope.logic.azure.com:443/workflows/643e69f83c8944438d68119179a10a64/triggers/"
             "manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=KODuebWbDGYFr0z0eu-6Rj8"
             "aUKz7108W3wrNJZxFE5A", "format": "markdown"}, "Power Automate / Workflows (for MSTeams)"),
    ({"url": "workflows://prod-161.westeurope.logic.azure.com:443/643e69f83c8944438d68119179a10a64/KODuebWbDGYFr0z0eu-6R"
             "j8aUKz7108W3wrNJZxFE5A/"}, "Power Automate / Workflows (for MSTeams)"),
    ({"url": "tgram://123456789:ABCdefGhIJKlmnOPQRsTUVwxyZ012345678/{to}",
      "recipient_pattern": "-?[0-9]{5,20}|@[A-Za-z][A-Za-z0-9_]{4,31}"}, "Telegram"),
    ({"targets": {"ops": "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
                  "releases": "https://discord.com/api/webhooks/4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_jt"}},
     {"ops": "Discord", "releases": "Discord"}),
    ({"url": f"mmosts://mattermost.example.com/{MATTERMOST_TOKEN}?channel={{to}}"}, "Mattermost"),
    ({"url": "ntfys://notify:pw-1234@ntfy.example.com/{to}"}, "ntfy"),
    ({"url": "ntfys://ntfy.sh/{to}"}, "ntfy"),
    ({"url": "matrixs://bot:pw-1234@matrix.example.org/{to}"}, "Matrix"),
    ({"url": "pover://uQiRzpo4DXghDmr9QzzfQu27cmVRsG@azGDORePK8gMaC0QOYAMyEEuzJnyUi"}, "Pushover"),
    ({"url": "gotifys://gotify.example.com/AbCdEfGhIjKlMnO"}, "Gotify"),
])
def test_the_documented_urls_build_and_are_listed_by_service_name(options, service):
    channel = AppriseChannel("documented", **options)
    shown = channel.describe()
    assert shown.get("targets", shown.get("service")) == service
    for secret in ("KODuebWbDGYFr0z0eu-6Rj8aUKz7108W3wrNJZxFE5A", "ABCdefGhIJKlmnOPQRsTUVwxyZ012345678",
                   "JHMHI8qBe7bk2ZwO5U711o3dV_js", MATTERMOST_TOKEN, "pw-1234", "azGDORePK8gMaC0QOYAMyEEuzJnyUi"):
        assert secret not in json.dumps(shown)
