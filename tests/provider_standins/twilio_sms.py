"""A stand-in for Twilio's Messages endpoint, on loopback in the test process.

It answers as POST /2010-04-01/Accounts/{AccountSid}/Messages.json does: 201 with the created
Message resource, or Twilio's error document {"code", "message", "more_info", "status"}. It
checks the Basic auth as Twilio does, and can answer late or drop the connection. The official
`twilio` SDK is pointed at it through the channel's base_url option.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from urllib.parse import parse_qsl

from tests.provider_standins import Reply, ScriptedStandIn

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"
FROM_NUMBER = "+15005550006"
TO_NUMBER = "+14155550100"
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


@dataclass
class Answer(Reply):
    """One scripted answer. The default is Twilio's 201 with the created message."""

    status: int = 201  # body None: the created Message resource
    message_status: str = "queued"  # for the created resource
    error_code: int | None = None  # for the created resource


def twilio_error(code: int, status: int, message: str, headers: dict | None = None) -> Answer:
    """Twilio's error document, as the Messages endpoint returns it."""
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return Answer(status=status, body=body, headers=headers or {})


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict
    form: dict


class TwilioStandIn(ScriptedStandIn):
    """Answers as Twilio's Messages endpoint. Scripts are per 'To' number; unscripted sends succeed."""

    def __init__(self) -> None:
        super().__init__()
        self.sids: list[str] = []  # SIDs of the messages it created, in order

    def parse(self, path, headers, raw) -> Received:
        return Received(time.monotonic(), path, dict(headers), dict(parse_qsl(raw.decode())))

    def script_key(self, received: Received) -> str:
        return received.form.get("To", "")

    def default_reply(self) -> Answer:
        return Answer()

    def complete(self, received: Received, answer: Answer) -> Reply:
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if received.headers.get("Authorization") != expected:
            answer = twilio_error(20003, 401, "Authenticate")
        elif received.path != MESSAGES_PATH:
            answer = twilio_error(20404, 404, f"The requested resource {received.path} was not found")
        if answer.body is None:
            return Reply(answer.status, self.created(received.form, answer), answer.headers)
        return answer

    def created(self, form: dict, answer: Answer) -> dict:
        sid = "SM" + secrets.token_hex(16)
        with self._lock:
            self.sids.append(sid)
        now = format_datetime(datetime.now(timezone.utc), usegmt=True)
        return {
            "account_sid": ACCOUNT_SID, "api_version": "2010-04-01", "body": form.get("Body"),
            "date_created": now, "date_updated": now, "date_sent": None, "direction": "outbound-api",
            "error_code": answer.error_code, "error_message": None, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0", "num_segments": "1",
            "price": None, "price_unit": "USD", "sid": sid, "status": answer.message_status, "to": form.get("To"),
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media.json"},
            "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        }


# A channels file with one Twilio channel "sms", its credentials from the environment.
TWILIO_CHANNELS_TOML = """
[channels.sms]
backend = "channels.backends.twilio_sms.TwilioSmsChannel"
[channels.sms.options]
account_sid = "${{TWILIO_ACCOUNT_SID}}"
auth_token = "${{TWILIO_AUTH_TOKEN}}"
from_number = "+15005550006"
base_url = "{base_url}"
timeout = {timeout}
"""
