"""The Slack channel end to end: real dispatcher processes on the test database post through
the Slack stand-in (tests/provider_standins/slack.py) in this process."""

from __future__ import annotations

import pytest

from tests.helpers import enqueue_one, fast_retries, history, start_dispatcher, wait_for_status
from tests.provider_standins.slack import CHANNEL_ID, SLACK_CHANNELS_TOML, TOKEN, Answer, SlackStandIn, slack_error

pytestmark = pytest.mark.usefixtures("no_proxy")

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
