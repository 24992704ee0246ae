"""The Slack channel against a local stand-in for Slack's chat.postMessage
(tests/provider_standins/slack.py): what each of Slack's answers becomes, validation and
configuration. The official `slack-sdk` WebClient is pointed at the stand-in through the
channel's base_url option.
"""

from __future__ import annotations

import json
import time

import pytest

from channels.backends.slack import SlackChannel
from channels.base import Message
from channels.errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError
from tests.helpers import free_port
from tests.provider_standins import build_from_toml
from tests.provider_standins.slack import CHANNEL_ID, SLACK_CHANNELS_TOML, TOKEN, Answer, SlackStandIn, slack_error

pytestmark = pytest.mark.usefixtures("no_proxy")


def slack_channel(standin: SlackStandIn, **options) -> SlackChannel:
    return SlackChannel("slack", **{"token": TOKEN, "base_url": standin.base_url, "timeout": 2, **options})


def message(to: str = CHANNEL_ID, body: str = "Deploy finished") -> Message:
    return Message(recipient=to, body=body, notification_id="n-1")


# --- the channel against the stand-in ---------------------------------------------------------


def test_send_posts_the_message_and_returns_channel_and_ts(slack):
    posted = slack_channel(slack).deliver(message())

    assert posted == slack.posted[0] == f"{CHANNEL_ID}/1700000000.000100"
    (request,) = slack.requests
    assert request.path == "/api/chat.postMessage"
    assert request.json == {"channel": CHANNEL_ID, "text": "Deploy finished"}
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"].startswith("application/json")


def test_a_channel_name_is_answered_with_the_channel_id(slack):
    assert slack_channel(slack).deliver(message(to="#deploys")) == "C0NAMED00/1700000000.000100"
    assert slack.requests[0].json["channel"] == "#deploys"


@pytest.mark.parametrize(
    "code",
    [
        "channel_not_found", "not_in_channel", "is_archived", "invalid_auth", "account_inactive", "token_revoked",
        "msg_too_long", "no_text", "restricted_action", "missing_scope",
        "some_new_error_slack_added",  # unknown with HTTP 200: permanent
    ],
)
def test_ok_false_is_never_a_success_and_these_codes_are_permanent(slack, code):
    slack.script(CHANNEL_ID, slack_error(code))

    with pytest.raises(PermanentChannelError) as raised:
        slack_channel(slack).deliver(message())

    assert raised.value.status == code and code in str(raised.value)
    assert len(slack.requests) == 1


def test_a_wrong_token_is_refused_by_the_stand_in_and_permanent(slack):
    with pytest.raises(PermanentChannelError, match="invalid_auth"):
        slack_channel(slack, token="xoxb-revoked").deliver(message())


@pytest.mark.parametrize("body", [{"ok": False, "error": "ratelimited"}, ""], ids=["slack-body", "empty-body"])
def test_429_is_transient_and_carries_retry_after(slack, body):
    slack.script(CHANNEL_ID, Answer(status=429, body=body, headers={"Retry-After": "30"}))

    with pytest.raises(TransientChannelError) as raised:
        slack_channel(slack).deliver(message())

    assert raised.value.retry_after == 30
    assert len(slack.requests) == 1  # no RateLimitErrorRetryHandler: the SDK did not wait and retry


@pytest.mark.parametrize(
    "code", ["ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"]
)
def test_these_codes_are_transient_even_with_http_200(slack, code):
    slack.script(CHANNEL_ID, slack_error(code))
    with pytest.raises(TransientChannelError) as raised:
        slack_channel(slack).deliver(message())
    assert raised.value.status == code and raised.value.retry_after is None


@pytest.mark.parametrize(
    "answer, status",
    [
        (slack_error("internal_error", status=500), "internal_error"),
        (slack_error("some_new_error_slack_added", status=502), "some_new_error_slack_added"),  # unknown, but a 5xx
        (Answer(status=503, body="<html><body>Service Unavailable</body></html>"), 503),  # a proxy's page: no code
    ],
    ids=["500-internal_error", "502-unknown-code", "503-html"],
)
def test_server_errors_are_transient(slack, answer, status):
    slack.script(CHANNEL_ID, answer)
    with pytest.raises(TransientChannelError) as raised:
        slack_channel(slack).deliver(message())
    assert raised.value.status == status


def test_retry_after_on_a_503_is_honoured_too(slack):
    slack.script(CHANNEL_ID, slack_error("service_unavailable", status=503, headers={"Retry-After": "4"}))
    with pytest.raises(TransientChannelError) as raised:
        slack_channel(slack).deliver(message())
    assert raised.value.retry_after == 4


def test_an_answer_slower_than_the_timeout_is_transient(slack):
    slack.script(CHANNEL_ID, Answer(delay=5))
    started = time.monotonic()

    with pytest.raises(TransientChannelError, match="did not answer within 0.5s"):
        slack_channel(slack, timeout=0.5).deliver(message())

    assert time.monotonic() - started < 2


def test_a_dropped_connection_is_transient_and_not_resent_by_the_sdk(slack):
    slack.script(CHANNEL_ID, Answer(drop=True))

    with pytest.raises(TransientChannelError, match="connection to Slack failed"):
        slack_channel(slack).deliver(message())

    # The SDK's default ConnectionErrorRetryHandler would have posted again at once.
    assert len(slack.requests) == 1


def test_no_server_listening_is_transient():
    channel = SlackChannel("slack", token=TOKEN, base_url=f"http://127.0.0.1:{free_port()}/api/", timeout=1)
    with pytest.raises(TransientChannelError, match="connection to Slack failed"):
        channel.deliver(message())


# --- validation and configuration -------------------------------------------------------------


def test_validate_accepts_ids_and_names_and_refuses_the_rest(slack):
    channel = slack_channel(slack)
    for recipient in (CHANNEL_ID, "U0123ABCD", "#deploys"):
        assert channel.validate(message(to=recipient)).recipient == recipient
    with pytest.raises(InvalidMessage) as raised:
        channel.validate(message(to="deploys"))
    assert raised.value.field == "to"
    with pytest.raises(InvalidMessage) as raised:
        channel.validate(message(body="x" * 40_001))
    assert raised.value.field == "message"


@pytest.mark.parametrize(
    "options, complaint",
    [
        ({"token": ""}, "token is required"),
        ({"token": "   "}, "token is required"),
        ({"base_url": "slack.com/api"}, r"base_url must be an http\(s\) URL"),
        ({"timeout": -1}, "timeout must be a positive number"),
    ],
)
def test_bad_options_are_a_configuration_error_naming_the_channel(options, complaint):
    with pytest.raises(ChannelConfigurationError, match=complaint) as raised:
        SlackChannel("slack", **{"token": TOKEN, **options})
    assert "'slack'" in str(raised.value)


def test_a_missing_token_in_the_environment_names_the_channel_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    path = tmp_path / "channels.toml"
    path.write_text(SLACK_CHANNELS_TOML.format(base_url="https://slack.com/api/", timeout=10))
    with pytest.raises(ChannelConfigurationError, match="channel 'slack': environment variable.* SLACK_BOT_TOKEN"):
        build_from_toml(path)


def test_describe_shows_the_limits_but_not_the_token(slack):
    described = slack_channel(slack).describe()
    assert described["kind"] == "slack" and described["limits"] == {"message_max_chars": 40_000}
    assert TOKEN not in json.dumps(described)
