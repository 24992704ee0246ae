"""The recipients, subjects and bodies each kind of channel accepts (channels/validation.py)."""

from __future__ import annotations

import pytest

from channels.base import Message
from channels.errors import InvalidMessage
from channels.validation import LINE_BREAKS, validate_email_message, validate_slack_message, validate_sms_message


def msg(recipient="x", body="hi", subject="", attempt=1) -> Message:
    return Message(recipient=recipient, body=body, subject=subject, attempt=attempt)


def refused(validator, message: Message) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        validator(message)
    return caught.value


# --- validation -------------------------------------------------------------------------------


class TestEmail:
    @pytest.mark.parametrize(
        "given, stored",
        [("alice@example.com", "alice@example.com"), ("Alice@EXAMPLE.COM", "Alice@example.com")],
    )
    def test_address_is_normalised(self, given, stored):
        assert validate_email_message(msg(given)).recipient == stored

    @pytest.mark.parametrize("address", ["not-an-email", "alice@", "@example.com", "a b@example.com", ""])
    def test_invalid_address(self, address):
        assert refused(validate_email_message, msg(address)).field == "to"

    def test_subject_length(self):
        assert validate_email_message(msg("a@example.com", subject="s" * 998)).subject == "s" * 998
        assert refused(validate_email_message, msg("a@example.com", subject="s" * 999)).field == "subject"

    @pytest.mark.parametrize("subject", ["a\rb", "a\nb", "a\r\nBcc: x@example.com"])
    def test_subject_must_be_one_line(self, subject):
        assert refused(validate_email_message, msg("a@example.com", subject=subject)).field == "subject"


class TestSms:
    @pytest.mark.parametrize(
        "given, stored",
        [
            ("+1 415 555 0100", "+14155550100"),
            ("+1 (415) 555-0100", "+14155550100"),
            ("+14155550100", "+14155550100"),
            ("+44 20 7946 0958", "+442079460958"),
        ],
    )
    def test_number_is_stored_as_e164(self, given, stored):
        assert validate_sms_message(msg(given)).recipient == stored

    @pytest.mark.parametrize("number", ["12345", "4155550100", "+1 415 555 010", "+999 1234", "call me", ""])
    def test_invalid_number(self, number):
        assert refused(validate_sms_message, msg(number)).field == "to"

    def test_body_length(self):
        assert validate_sms_message(msg("+14155550100", body="x" * 1600)).body == "x" * 1600
        assert refused(validate_sms_message, msg("+14155550100", body="x" * 1601)).field == "message"


class TestSlack:
    @pytest.mark.parametrize("recipient", ["C0123ABCD", "G0123ABCD", "D0123ABCD", "U0123ABCD", "W0123ABCD", "#general", "#dev-ops_2.x"])
    def test_ids_and_channel_names(self, recipient):
        assert validate_slack_message(msg(recipient)).recipient == recipient

    @pytest.mark.parametrize("recipient", ["general", "#General", "# general", "#", "C01", "c0123abcd", "X0123ABCD", "#" + "a" * 81])
    def test_invalid_recipient(self, recipient):
        assert refused(validate_slack_message, msg(recipient)).field == "to"

    def test_text_length(self):
        assert validate_slack_message(msg("#general", body="x" * 40_000)).body == "x" * 40_000
        assert refused(validate_slack_message, msg("#general", body="x" * 40_001)).field == "message"


def test_line_breaks_are_exactly_where_splitlines_splits():
    # Python's email library folds and parses headers with str.splitlines().
    splits = {c for c in map(chr, range(0x110000)) if len(f"a{c}b".splitlines()) > 1}
    assert LINE_BREAKS == splits
