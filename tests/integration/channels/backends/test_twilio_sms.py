"""The Twilio SMS channel end to end: real dispatcher processes on the test database send
through the Twilio stand-in (tests/provider_standins/twilio_sms.py) in this process."""

from __future__ import annotations

import pytest

from tests.helpers import enqueue_one, fast_retries, history, start_dispatcher, wait_for_status
from tests.provider_standins.twilio_sms import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    TO_NUMBER,
    TWILIO_CHANNELS_TOML,
    TwilioStandIn,
    twilio_error,
)

pytestmark = pytest.mark.usefixtures("no_proxy")

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
