"""A stand-in for Twilio's Messages endpoint, on loopback in the test process.

It answers as POST /2010-04-01/Accounts/{AccountSid}/Messages.json does: 201 with the created
Message resource, or Twilio's error document {"code", "message", "more_info", "status"}. It
checks the Basic auth as Twilio does, and can answer late or drop the connection. The official
`twilio` SDK is pointed at it through the channel's base_url option.

A message created with a StatusCallback URL gets Twilio's status callbacks there: form-encoded
POSTs (MessageSid, MessageStatus, ErrorCode when it failed, ...) signed as Twilio signs them
(X-Twilio-Signature, with the auth token). Which ones, per recipient: a script
(`script_callbacks`), else the numbers of RECEIPT_NUMBERS, else "sent" then "delivered"; each
may come late, twice, before the create call is answered, or in any order. Every callback
posted, with the service's answer, is in `callbacks`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.provider_standins import Reply, ScriptedStandIn

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"
FROM_NUMBER = "+15005550006"
TO_NUMBER = "+14155550100"
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
API_VERSION = "2010-04-01"


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
    sid: str = ""  # the SID of the message it created, if it did
    # the status callbacks still to post about that message, once the answer is sent
    callbacks: list = field(default_factory=list)


# --- status callbacks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusCallback:
    """One status callback that the stand-in posts about a message it created."""

    status: str  # MessageStatus (and SmsStatus): queued, sent, delivered, undelivered, failed, ...
    error_code: int | None = None  # ErrorCode, which Twilio adds to undelivered and failed
    delay: float = 0.0  # seconds after the previous callback (the first: after the answer)
    copies: int = 1  # posted this many times, as Twilio does when it retries a callback
    before_answer: bool = False  # posted, and its answer awaited, before the create call is answered


@dataclass
class PostedCallback:
    """A status callback as posted, and what the service answered."""

    url: str
    params: dict
    answer: int | None  # the HTTP status; None: no answer (connection refused or cut)
    at: float  # time.monotonic() once answered


SENT = StatusCallback("sent")
# The recipients whose callbacks are decided by their number, as Twilio's test numbers decide
# a send's outcome. Twilio's words: 30003 "Unreachable destination handset", 21610 "Attempt to
# send to unsubscribed recipient".
DELIVERED_TO = "+14155550111"
UNDELIVERED_TO = "+14155550112"
OPTED_OUT_TO = "+14155550113"
RECEIPT_NUMBERS = {
    DELIVERED_TO: (SENT, StatusCallback("delivered")),
    UNDELIVERED_TO: (SENT, StatusCallback("undelivered", 30003)),
    OPTED_OUT_TO: (StatusCallback("failed", 21610),),
}
DEFAULT_CALLBACKS = (SENT, StatusCallback("delivered"))


def twilio_signature(url: str, params: dict, auth_token: str = AUTH_TOKEN) -> str:
    """X-Twilio-Signature as Twilio computes it: the URL, then each POST parameter's name and
    value in the names' order, HMAC-SHA1 with the auth token, base64."""
    data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def status_callback_params(*, sid: str, to: str, status: str, error_code: int | None = None,
                           sender: str = FROM_NUMBER, account_sid: str = ACCOUNT_SID) -> dict:
    """The form fields of Twilio's status callback about message `sid`."""
    params = {"ApiVersion": API_VERSION, "AccountSid": account_sid, "MessageSid": sid, "SmsSid": sid,
              "MessageStatus": status, "SmsStatus": status, "To": to, "From": sender}
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    return params


def post_status_callback(url: str, params: dict, signature: str | None) -> int:
    """POST a status callback as Twilio does (form-encoded, X-Twilio-Signature unless None);
    the HTTP status of the answer."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"the stand-in posts to loopback http URLs only, not {url!r}")
    headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "TwilioProxy/1.1"}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
    try:
        conn.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=urlencode(params),
                     headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# --- the stand-in ---------------------------------------------------------------------------------


class TwilioStandIn(ScriptedStandIn):
    """Answers as Twilio's Messages endpoint. Scripts are per 'To' number; unscripted sends
    succeed. A message with a StatusCallback gets its status callbacks (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.sids: list[str] = []  # SIDs of the messages it created, in order
        self.callbacks: list[PostedCallback] = []  # status callbacks posted, in order
        self._callback_scripts: dict[str, list[tuple[StatusCallback, ...]]] = {}

    def parse(self, path, headers, raw) -> Received:
        return Received(time.monotonic(), path, dict(headers), dict(parse_qsl(raw.decode())))

    def sends_to(self, number: str) -> list[Received]:
        """The requests of sends to `number`."""
        with self._lock:
            return [r for r in self.requests if r.form.get("To") == number]

    def callbacks_about(self, sid: str) -> list[PostedCallback]:
        with self._lock:
            return [c for c in self.callbacks if c.params.get("MessageSid") == sid]

    def script_callbacks(self, to: str, *callbacks: StatusCallback) -> None:
        """The status callbacks of the next message to `to` (none at all if none are given);
        each call scripts one more message."""
        with self._lock:
            self._callback_scripts.setdefault(to, []).append(callbacks)

    def _callbacks_for(self, to: str) -> tuple[StatusCallback, ...]:
        with self._lock:
            scripted = self._callback_scripts.get(to)
            if scripted:
                return scripted.pop(0)
        return RECEIPT_NUMBERS.get(to, DEFAULT_CALLBACKS)

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
            created = self.created(received.form, answer)
            received.sid = created["sid"]
            if received.form.get("StatusCallback"):
                callbacks = self._callbacks_for(received.form.get("To", ""))
                for callback in callbacks:
                    if callback.before_answer:
                        self._post(received, callback)
                received.callbacks = [c for c in callbacks if not c.before_answer]
            return Reply(answer.status, created, answer.headers)
        return answer

    def answered(self, received: Received, reply: Reply) -> None:
        if received.callbacks:
            threading.Thread(target=self._post_later, args=(received,), daemon=True).start()

    def _post_later(self, received: Received) -> None:
        for callback in received.callbacks:
            if self.release.wait(callback.delay):
                return  # the stand-in is closing
            self._post(received, callback)

    def _post(self, received: Received, callback: StatusCallback) -> None:
        url, form = received.form["StatusCallback"], received.form
        params = status_callback_params(sid=received.sid, to=form.get("To", ""), status=callback.status,
                                        error_code=callback.error_code, sender=form.get("From", ""))
        if form.get("MessagingServiceSid"):
            params["MessagingServiceSid"] = form["MessagingServiceSid"]
        for _ in range(callback.copies):
            try:
                answer = post_status_callback(url, params, twilio_signature(url, params))
            except OSError:
                answer = None
            with self._lock:
                self.callbacks.append(PostedCallback(url, params, answer, time.monotonic()))

    def created(self, form: dict, answer: Answer) -> dict:
        sid = "SM" + secrets.token_hex(16)
        with self._lock:
            self.sids.append(sid)
        now = format_datetime(datetime.now(timezone.utc), usegmt=True)
        return {
            "account_sid": ACCOUNT_SID, "api_version": API_VERSION, "body": form.get("Body"),
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
