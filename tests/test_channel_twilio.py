"""The Twilio SMS channel against a local stand-in for Twilio's Messages endpoint.

The official `twilio` SDK is pointed at the stand-in through the channel's base_url option.
The stand-in (http.server on 127.0.0.1, in the test process) answers as
POST /2010-04-01/Accounts/{AccountSid}/Messages.json does: 201 with the created Message
resource, or Twilio's error document {"code", "message", "more_info", "status"}. It checks the
Basic auth as Twilio does, and can answer late or drop the connection.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from urllib.parse import parse_qsl

import pytest

from channels.backends.twilio_sms import TwilioSmsChannel
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

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"
FROM_NUMBER = "+15005550006"
TO_NUMBER = "+14155550100"
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


# --- the stand-in ---------------------------------------------------------------------------


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


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Loopback traffic only: no proxy from the environment may carry it elsewhere."""
    drop_proxy_variables(monkeypatch)


@pytest.fixture
def twilio():
    with TwilioStandIn() as standin:
        yield standin


def sms_channel(standin: TwilioStandIn, **options) -> TwilioSmsChannel:
    options = {"from_number": FROM_NUMBER, "timeout": 2, **options}
    return TwilioSmsChannel("sms", account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, base_url=standin.url, **options)


def message(to: str = TO_NUMBER, body: str = "Your code is 123456") -> Message:
    return Message(recipient=to, body=body, notification_id="n-1")


# --- the channel against the stand-in ---------------------------------------------------------


def test_send_creates_the_message_and_returns_its_sid(twilio):
    sid = sms_channel(twilio).deliver(message())

    assert sid == twilio.sids[0] and sid.startswith("SM")
    (request,) = twilio.requests
    assert request.path == MESSAGES_PATH
    assert request.form == {"To": TO_NUMBER, "From": FROM_NUMBER, "Body": "Your code is 123456"}
    expected_auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["Authorization"] == expected_auth
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_send_through_a_messaging_service_names_the_service_and_no_from(twilio):
    sms_channel(twilio, from_number=None, messaging_service_sid="MG" + "1" * 32).deliver(message())

    (request,) = twilio.requests
    assert request.form == {"To": TO_NUMBER, "MessagingServiceSid": "MG" + "1" * 32, "Body": "Your code is 123456"}


def test_twilio_region_or_edge_in_the_environment_does_not_move_the_base_url(twilio, monkeypatch):
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    assert sms_channel(twilio).deliver(message()).startswith("SM")
    assert len(twilio.requests) == 1


@pytest.mark.parametrize(
    "code, status, text",
    [
        (21211, 400, "The 'To' number +14155550100 is not a valid phone number."),
        (21610, 400, "Attempt to send to unsubscribed recipient"),
        (21614, 400, "'To' number is not a valid mobile number"),
        (21408, 400, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number"),
        (21606, 400, "The 'From' phone number provided is not a valid, message-capable Twilio phone number."),
        (21212, 400, "The 'From' number +15005550006 is not a valid phone number."),
        (20003, 401, "Authenticate"),
        (21999, 400, "an error code this channel does not know, with a 4xx"),
    ],
)
def test_twilio_refusals_are_permanent(twilio, code, status, text):
    twilio.script(TO_NUMBER, twilio_error(code, status, text))

    with pytest.raises(PermanentChannelError) as raised:
        sms_channel(twilio).deliver(message())

    assert raised.value.status == code
    assert str(code) in str(raised.value) and text in str(raised.value)
    assert len(twilio.requests) == 1


def test_wrong_credentials_are_refused_by_the_stand_in_and_permanent(twilio):
    channel = TwilioSmsChannel("sms", account_sid=ACCOUNT_SID, auth_token="revoked", from_number=FROM_NUMBER,
                               base_url=twilio.url, timeout=2)
    with pytest.raises(PermanentChannelError, match="20003"):
        channel.deliver(message())


@pytest.mark.parametrize("code", [20429, None])
def test_429_is_transient_and_carries_retry_after(twilio, code):
    error = twilio_error(code or 429, 429, "Too Many Requests", headers={"Retry-After": "7"})
    if code is None:  # a bare 429 without Twilio's code
        error.body = "Too Many Requests"
    twilio.script(TO_NUMBER, error)

    with pytest.raises(TransientChannelError) as raised:
        sms_channel(twilio).deliver(message())

    assert raised.value.retry_after == 7
    assert len(twilio.requests) == 1  # the SDK did not retry on its own


def test_concurrent_sends_each_get_their_own_answer_and_retry_after(twilio):
    """Sends share one channel on dispatcher threads; Retry-After is kept per thread."""
    recipients = [f"+1415555{i:04d}" for i in range(100, 116)]
    for i, to in enumerate(recipients):
        if i % 2:
            twilio.script(to, twilio_error(20429, 429, "Too Many Requests", headers={"Retry-After": str(i)}))
        else:
            twilio.script(to, Answer(delay=0.05))  # overlap with the 429s
    channel = sms_channel(twilio)

    def send(to):
        try:
            return channel.deliver(message(to=to))
        except TransientChannelError as exc:
            return exc.retry_after

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, recipients))

    for i, result in enumerate(results):
        assert result == i if i % 2 else result.startswith("SM")
    assert len(twilio.requests) == 16


def test_full_sender_queue_is_transient(twilio):
    twilio.script(TO_NUMBER, twilio_error(21611, 400, "This 'From' number has exceeded the maximum number of queued messages"))
    with pytest.raises(TransientChannelError) as raised:
        sms_channel(twilio).deliver(message())
    assert raised.value.retry_after is None


@pytest.mark.parametrize(
    "answer",
    [
        twilio_error(20500, 500, "Internal Server Error"),
        Answer(status=503, body="<html><body>Service Unavailable</body></html>"),
        Answer(status=502, body="Bad Gateway"),
    ],
    ids=["500-twilio-20500", "503-html", "502-text"],
)
def test_server_errors_are_transient(twilio, answer):
    twilio.script(TO_NUMBER, answer)
    with pytest.raises(TransientChannelError) as raised:
        sms_channel(twilio).deliver(message())
    assert raised.value.status == (answer.body["code"] if isinstance(answer.body, dict) else answer.status)
    assert raised.value.retry_after is None


def test_retry_after_on_a_503_is_honoured_too(twilio):
    twilio.script(TO_NUMBER, twilio_error(20503, 503, "Service Unavailable", headers={"Retry-After": "4"}))
    with pytest.raises(TransientChannelError) as raised:
        sms_channel(twilio).deliver(message())
    assert raised.value.retry_after == 4


def test_an_answer_slower_than_the_timeout_is_transient(twilio):
    twilio.script(TO_NUMBER, Answer(delay=5))
    started = time.monotonic()

    with pytest.raises(TransientChannelError, match="did not answer within 0.5s"):
        sms_channel(twilio, timeout=0.5).deliver(message())

    assert time.monotonic() - started < 2


def test_a_dropped_connection_is_transient(twilio):
    twilio.script(TO_NUMBER, Answer(drop=True))
    with pytest.raises(TransientChannelError, match="cannot reach the provider"):
        sms_channel(twilio).deliver(message())
    assert len(twilio.requests) == 1


def test_no_server_listening_is_transient():
    channel = TwilioSmsChannel("sms", account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=FROM_NUMBER,
                               base_url=f"http://127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(TransientChannelError):
        channel.deliver(message())


@pytest.mark.parametrize("status", ["failed", "undelivered"])
def test_a_message_created_already_failed_is_a_permanent_failure_not_a_success(twilio, status):
    twilio.script(TO_NUMBER, Answer(message_status=status, error_code=30007))

    with pytest.raises(PermanentChannelError) as raised:
        sms_channel(twilio).deliver(message())

    assert twilio.sids[0] in str(raised.value) and status in str(raised.value) and "30007" in str(raised.value)


# --- validation and configuration -------------------------------------------------------------


def test_validate_normalises_to_e164_and_refuses_what_twilio_cannot_send(twilio):
    channel = sms_channel(twilio)
    assert channel.validate(message(to="+1 (415) 555-0100")).recipient == "+14155550100"
    with pytest.raises(InvalidMessage) as raised:
        channel.validate(message(to="0415 555 0100"))
    assert raised.value.field == "to"
    with pytest.raises(InvalidMessage) as raised:
        channel.validate(message(body="x" * 1601))
    assert raised.value.field == "message"


@pytest.mark.parametrize(
    "options, complaint",
    [
        ({"from_number": None}, "exactly one of from_number and messaging_service_sid"),
        ({"messaging_service_sid": "MG" + "1" * 32}, "exactly one of from_number and messaging_service_sid"),
        ({"auth_token": ""}, "account_sid and auth_token are required"),
        ({"base_url": "ftp://example.com"}, r"base_url must be an http\(s\) URL"),
        ({"timeout": 0}, "timeout must be a positive number"),
    ],
)
def test_bad_options_are_a_configuration_error_naming_the_channel(options, complaint):
    options = {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "from_number": FROM_NUMBER, **options}
    with pytest.raises(ChannelConfigurationError, match=complaint) as raised:
        TwilioSmsChannel("sms", **options)
    assert "'sms'" in str(raised.value)


def test_missing_credentials_in_the_environment_name_the_channel_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TWILIO_ACCOUNT_SID", raising=False)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    path = tmp_path / "channels.toml"
    path.write_text(TWILIO_CHANNELS_TOML.format(base_url="https://api.twilio.com", timeout=10))
    with pytest.raises(ChannelConfigurationError, match="channel 'sms': environment variable.* TWILIO_ACCOUNT_SID"):
        build_from_toml(path)


def test_describe_shows_the_limits_and_the_sender_but_no_secret(twilio):
    described = sms_channel(twilio).describe()
    assert described["kind"] == "sms" and described["limits"] == {"message_max_chars": 1600}
    assert described["sender"] == FROM_NUMBER
    assert AUTH_TOKEN not in json.dumps(described)


# --- end to end: real dispatcher processes, the stand-in in this process ------------------------

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
DISPATCHER_ENV = {
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    **fast_retries("0.3", "1", max_attempts="5"),
}


def start_sms_dispatcher(start_dispatchers, channels_file, standin: TwilioStandIn):
    toml = TWILIO_CHANNELS_TOML.format(base_url=standin.url, timeout=2)
    return start_dispatcher(start_dispatchers, channels_file, toml, DISPATCHER_ENV, threads=4)


def enqueue_sms(to: str, body: str = "Your code is 123456") -> str:
    return enqueue_one("sms", to, body, client="channel-tests")


def test_e2e_an_sms_is_sent_and_its_twilio_sid_is_in_the_history(start_dispatchers, channels_file, twilio):
    nid = enqueue_sms(TO_NUMBER, "Hello from the outbox")
    start_sms_dispatcher(start_dispatchers, channels_file, twilio)

    wait_for_status(nid, "sent", message="sms sent")

    events = history(nid)
    assert [(e.status, e.attempt) for e in events] == [("queued", 0), ("sent", 1)]
    (request,) = twilio.requests
    assert request.form == {"To": TO_NUMBER, "From": FROM_NUMBER, "Body": "Hello from the outbox"}
    assert events[-1].provider_message_id == twilio.sids[0]


def test_e2e_an_invalid_number_is_failed_after_one_attempt(start_dispatchers, channels_file, twilio):
    twilio.script("+15005550001", twilio_error(21211, 400, "The 'To' number +15005550001 is not a valid phone number."))
    nid = enqueue_sms("+15005550001")
    start_sms_dispatcher(start_dispatchers, channels_file, twilio)

    wait_for_status(nid, "failed", message="sms failed")

    events = history(nid)
    assert [(e.status, e.attempt) for e in events] == [("queued", 0), ("failed", 1)]
    assert "21211" in events[-1].error and "not a valid phone number" in events[-1].error
    assert len(twilio.requests) == 1


def test_e2e_a_429_is_retried_not_before_retry_after_then_sent(start_dispatchers, channels_file, twilio):
    twilio.script(TO_NUMBER, twilio_error(20429, 429, "Too Many Requests", headers={"Retry-After": "2"}))
    nid = enqueue_sms(TO_NUMBER)
    start_sms_dispatcher(start_dispatchers, channels_file, twilio)

    wait_for_status(nid, "sent", message="sms sent after the 429")

    queued, retrying, sent = history(nid)
    assert [(e.status, e.attempt) for e in (retrying, sent)] == [("retrying", 1), ("sent", 2)]
    assert "20429" in retrying.error
    assert (retrying.next_attempt_at - retrying.created_at).total_seconds() >= 2
    first, second = twilio.requests
    assert second.at - first.at >= 2  # Twilio saw the second attempt no earlier than it asked
    assert sent.provider_message_id == twilio.sids[0]
