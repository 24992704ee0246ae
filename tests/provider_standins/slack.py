"""A stand-in for Slack's chat.postMessage, on loopback in the test process.

It answers as POST /api/chat.postMessage does: HTTP 200 with {"ok": true, "channel", "ts",
"message"}, or HTTP 200 with {"ok": false, "error": "<code>"}; 429 with Retry-After when rate
limited. It checks the bot token as Slack does, and can answer late or drop the connection.
The official `slack-sdk` WebClient is pointed at it through the channel's base_url option.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass

from tests.provider_standins import Reply, ScriptedStandIn

TOKEN = "xoxb-0000000000-test-token"
CHANNEL_ID = "C0123ABCD"


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


# A channels file with one Slack channel "slack", its token from the environment.
SLACK_CHANNELS_TOML = """
[channels.slack]
backend = "channels.backends.slack.SlackChannel"
[channels.slack.options]
token = "${{SLACK_BOT_TOKEN}}"
base_url = "{base_url}"
timeout = {timeout}
"""
