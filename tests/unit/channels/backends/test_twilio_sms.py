"""The Twilio SMS channel against a local stand-in for Twilio's Messages endpoint
(tests/provider_standins/twilio_sms.py): what each of Twilio's answers becomes, validation and
configuration. The official `twilio` SDK is pointed at the stand-in through the channel's
base_url option.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from channels.backends.twilio_sms import TwilioSmsChannel
from channels.base import Message
from channels.errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError
from tests.helpers import free_port
from tests.provider_standins import build_from_toml
from tests.provider_standins.twilio_sms import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    MESSAGES_PATH,
    TO_NUMBER,
    TWILIO_CHANNELS_TOML,
    Answer,
    TwilioStandIn,
    twilio_error,
)

pytestmark = pytest.mark.usefixtures("no_proxy")


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
