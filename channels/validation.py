"""Recipient and content rules per kind of channel, shared by every backend of that kind.

Each function takes a Message and returns it normalised, or raises InvalidMessage naming the
field. Limits are the providers' own: RFC 5322 line length for subjects, Twilio's 1,600
characters for an SMS body, Slack's 40,000 characters for a message's text.
"""

from __future__ import annotations

import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from .base import Message
from .errors import InvalidMessage

EMAIL_SUBJECT_MAX = 998
SMS_BODY_MAX = 1600
SLACK_TEXT_MAX = 40_000

LIMITS = {
    "email": {"subject_max_chars": EMAIL_SUBJECT_MAX},
    "sms": {"message_max_chars": SMS_BODY_MAX},
    "slack": {"message_max_chars": SLACK_TEXT_MAX},
}

# The characters where Python's email library breaks a header into lines: those where
# str.splitlines() splits (LF, CR, VT, FF, FS, GS, RS, NEL, LINE and PARAGRAPH SEPARATOR).
# A subject holding one is refused at intake, not at send time.
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def has_line_break(text: str) -> bool:
    return not LINE_BREAKS.isdisjoint(text)


# Slack conversation ids (C public, G private, D direct), user ids (U, W), or #channel-name.
_SLACK_ID = re.compile(r"^[CGDUW][A-Z0-9]{6,}$")
_SLACK_NAME = re.compile(r"^#[a-z0-9][a-z0-9._-]{0,79}$")


def validate_email_message(message: Message) -> Message:
    """A syntactically valid address (no DNS look-up) and a one-line subject."""
    try:
        address = validate_email(message.recipient, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidMessage("to", f"not a valid email address: {exc}") from None
    if has_line_break(message.subject):
        raise InvalidMessage("subject", "must be a single line (no CR, LF or other line break)")
    if len(message.subject) > EMAIL_SUBJECT_MAX:
        raise InvalidMessage("subject", f"at most {EMAIL_SUBJECT_MAX} characters")
    return message.with_recipient(address)


def validate_sms_message(message: Message) -> Message:
    """A valid phone number in international form, stored as E.164; a body Twilio accepts."""
    try:
        number = phonenumbers.parse(message.recipient, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise InvalidMessage("to", "not a valid phone number in international form, e.g. +14155550100")
    if len(message.body) > SMS_BODY_MAX:
        raise InvalidMessage("message", f"at most {SMS_BODY_MAX} characters for an SMS")
    return message.with_recipient(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def validate_slack_message(message: Message) -> Message:
    """A Slack channel id, user id or #channel-name; text within Slack's limit."""
    if not (_SLACK_ID.match(message.recipient) or _SLACK_NAME.match(message.recipient)):
        raise InvalidMessage("to", "not a Slack channel id (C0123ABCD), user id (U0123ABCD) or #channel-name")
    if len(message.body) > SLACK_TEXT_MAX:
        raise InvalidMessage("message", f"at most {SLACK_TEXT_MAX} characters for Slack")
    return message


VALIDATORS = {
    "email": validate_email_message,
    "sms": validate_sms_message,
    "slack": validate_slack_message,
}
