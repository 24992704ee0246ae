"""The Slack channel against a local stand-in for Slack's chat.postMessage.

The official `slack-sdk` WebClient is pointed at the stand-in through the channel's base_url
option. The stand-in (http.server on 127.0.0.1, in the test process) answers as
POST /api/chat.postMessage does: HTTP 200 with {"ok": true, "channel", "ts", "message"}, or
HTTP 200 with {"ok": false, "error": "<code>"}; 429 with Retry-After when rate limited. It
checks the bot token as Slack does, and can answer late or drop the connection.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass

import pytest

from channels.backends.slack import SlackChannel
from channels.base import Message
from channels.errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError

from .provider_standins import (
    Reply,
    ScriptedStandIn,
    build_from_toml,
    drop_proxy_variables,
    enqueue_one,
    fast_retries,
    free_port,
    history,
    start_dispatcher,
    wait_for_status,
)

TOKEN = "xoxb-0000000000-test-token"
CHANNEL_ID = "C0123ABCD"


# --- the stand-in ---------------------------------------------------------------------------


@dataclass
class Answer(Reply):
    """One scripted answer. The default is Slack's 200 with "ok": true and the posted message."""

    # body None: the posted message


def slack_error(code: str, status: int = 200, headers: dict | None = None) -> Answer:
    """Slack's error answer: most come with HTTP 200."""
    return Answer(status=status, body={"ok": False, "error": code}, headers=headers or {})


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict
    json: dict


class SlackStandIn(ScriptedStandIn):
    """Answers as Slack's chat.postMessage. Scripts are per channel; unscripted posts succeed."""

    json_content_type = "application/json; charset=utf-8"

    def __init__(self) -> None:
        super().__init__()
        self.posted: list[str] = []  # "<channel>/<ts>" of each message it posted, in order
        self._ts = itertools.count(100)
        self.base_url = f"{self.url}/api/"

    def parse(self, path, headers, raw) -> Received:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        return Received(time.monotonic(), path, dict(headers), body)

    def script_key(self, received: Received) -> str:
        return received.json.get("channel", "")

    def default_reply(self) -> Answer:
        return Answer()

    def complete(self, received: Received, answer: Answer) -> Answer:
        if received.path != "/api/chat.postMessage":
            answer = slack_error("unknown_method", status=404)
        elif received.headers.get("Authorization") != f"Bearer {TOKEN}":
            answer = slack_error("invalid_auth")
        elif not received.json.get("text"):
            answer = slack_error("no_text")
        if answer.body is None:
            answer = Answer(answer.status, self.post(received.json), answer.headers)
        return answer

    def post(self, body: dict) -> dict:
        # Slack resolves a #name to the channel's id, and answers with the id.
        channel = body["channel"] if not body["channel"].startswith("#") else "C0NAMED00"
        ts = f"1700000000.{next(self._ts):06d}"
        with self._lock:
            self.posted.append(f"{channel}/{ts}")
        return {
            "ok": True, "channel": channel, "ts": ts,
            "message": {"type": "message", "subtype": "bot_message", "text": body.get("text"), "ts": ts, "bot_id": "B0123"},
        }


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Loopback traffic only: slack-sdk routes every request through HTTP(S)_PROXY when set."""
    drop_proxy_variables(monkeypatch)


@pytest.fixture
def slack():
    with SlackStandIn() as standin:
        yield standin


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


# --- end to end: real dispatcher processes, the stand-in in this process ------------------------

SLACK_CHANNELS_TOML = """
[channels.slack]
backend = "channels.backends.slack.SlackChannel"
[channels.slack.options]
token = "${{SLACK_BOT_TOKEN}}"
base_url = "{base_url}"
timeout = {timeout}
"""
DISPATCHER_ENV = {"SLACK_BOT_TOKEN": TOKEN, **fast_retries("0.3", "1", max_attempts="5")}


def start_slack_dispatcher(start_dispatchers, channels_file, standin: SlackStandIn):
    toml = SLACK_CHANNELS_TOML.format(base_url=standin.base_url, timeout=2)
    return start_dispatcher(start_dispatchers, channels_file, toml, DISPATCHER_ENV, threads=4)


def enqueue_slack(to: str, body: str = "Deploy finished") -> str:
    return enqueue_one("slack", to, body, client="channel-tests")


def test_e2e_a_slack_message_is_sent_and_its_ts_is_in_the_history(start_dispatchers, channels_file, slack):
    nid = enqueue_slack(CHANNEL_ID, "Hello from the outbox")
    start_slack_dispatcher(start_dispatchers, channels_file, slack)

    wait_for_status(nid, "sent", message="slack message sent")

    events = history(nid)
    assert [(e.status, e.attempt) for e in events] == [("queued", 0), ("sent", 1)]
    (request,) = slack.requests
    assert request.json == {"channel": CHANNEL_ID, "text": "Hello from the outbox"}
    assert events[-1].provider_message_id == slack.posted[0] == f"{CHANNEL_ID}/1700000000.000100"


def test_e2e_a_missing_channel_is_failed_after_one_attempt(start_dispatchers, channels_file, slack):
    slack.script("C0GONE0000", slack_error("channel_not_found"))
    nid = enqueue_slack("C0GONE0000")
    start_slack_dispatcher(start_dispatchers, channels_file, slack)

    wait_for_status(nid, "failed", message="slack message failed")

    events = history(nid)
    assert [(e.status, e.attempt) for e in events] == [("queued", 0), ("failed", 1)]
    assert "channel_not_found" in events[-1].error
    assert len(slack.requests) == 1


def test_e2e_ratelimited_is_retried_not_before_retry_after_then_sent(start_dispatchers, channels_file, slack):
    slack.script(CHANNEL_ID, Answer(status=429, body={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "2"}))
    nid = enqueue_slack(CHANNEL_ID)
    start_slack_dispatcher(start_dispatchers, channels_file, slack)

    wait_for_status(nid, "sent", message="slack message sent after the 429")

    queued, retrying, sent = history(nid)
    assert [(e.status, e.attempt) for e in (retrying, sent)] == [("retrying", 1), ("sent", 2)]
    assert "ratelimited" in retrying.error
    assert (retrying.next_attempt_at - retrying.created_at).total_seconds() >= 2
    first, second = slack.requests
    assert second.at - first.at >= 2  # Slack saw the second attempt no earlier than it asked
    assert sent.provider_message_id == slack.posted[0]
