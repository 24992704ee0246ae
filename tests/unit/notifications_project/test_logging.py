"""Logs (notifications_project/logging.py): JSON lines with LOG_FORMAT=json, and no secret in any
record (bearer and API keys, Authorization values, channel secrets)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.test import override_settings

from notifications_project.logging import REDACTED, JsonFormatter, RedactSecretsFilter, channel_secrets

API_KEY = "ntf_" + "k" * 32
TWILIO_TOKEN = "twilio-auth-token-0123456789"
SMTP_PASSWORD = "smtp-password-s3cr3t"
CHANNELS = {
    "sms": {"BACKEND": "channels.backends.twilio_sms.TwilioSmsChannel",
            "OPTIONS": {"account_sid": "AC123", "auth_token": TWILIO_TOKEN, "from_number": "+15005550006"}},
    "mail": {"BACKEND": "channels.backends.email.EmailChannel",
             "OPTIONS": {"from_email": "a@example.com", "connection": {"host": "smtp.example.com",
                                                                      "password": SMTP_PASSWORD}}},
}


def capture(*, formatter: logging.Formatter | None = None, redact: RedactSecretsFilter | None = None):
    """A logger writing to a string, through the given formatter and filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter or logging.Formatter("%(message)s"))
    if redact is not None:
        handler.addFilter(redact)
    logger = logging.getLogger(f"tests.logging.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_formatter_writes_one_object_per_line_with_the_extra_fields():
    logger, stream = capture(formatter=JsonFormatter())
    logger.info("delivery notification=%s outcome=%s", "n-1", "sent",
                extra={"notification_id": "n-1", "channel": "fake", "attempt": 2, "outcome": "sent", "duration_ms": 12.5})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "delivery notification=n-1 outcome=sent"
    assert first["level"] == "INFO" and first["logger"] == logger.name and isinstance(first["process"], int)
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert {k: first[k] for k in ("notification_id", "channel", "attempt", "outcome", "duration_ms")} == {
        "notification_id": "n-1", "channel": "fake", "attempt": 2, "outcome": "sent", "duration_ms": 12.5}
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]


def test_json_formatter_survives_values_json_cannot_encode():
    logger, stream = capture(formatter=JsonFormatter())
    logger.warning("odd", extra={"thing": object(), "when": __import__("datetime").date(2026, 1, 2)})
    entry = json.loads(stream.getvalue())
    assert entry["when"] == "2026-01-02" and entry["thing"].startswith("<object")


@override_settings(NOTIFICATION_CHANNELS=CHANNELS)
def test_the_filter_redacts_keys_authorization_values_and_channel_secrets():
    logger, stream = capture(redact=RedactSecretsFilter())
    logger.info("request headers %s", {"HTTP_AUTHORIZATION": f"Bearer {API_KEY}"})
    logger.info("Authorization: Basic dXNlcjpwYXNz")
    logger.info("key %s given on the command line", API_KEY)
    logger.info("twilio said 401 for token %s", TWILIO_TOKEN)
    logger.warning("smtp login failed", extra={"detail": f"password={SMTP_PASSWORD}"})
    try:
        raise ConnectionError(f"cannot log in with {SMTP_PASSWORD}")
    except ConnectionError:
        logger.exception("send failed")
    logger.info("prefix %s of a key is no secret", API_KEY[:12])
    text = stream.getvalue()
    for secret in (API_KEY, "dXNlcjpwYXNz", TWILIO_TOKEN, SMTP_PASSWORD, "k" * 16):
        assert secret not in text
    assert text.count(REDACTED) == 5
    assert "Bearer [REDACTED]" in text and "Basic [REDACTED]" in text
    assert f"prefix {API_KEY[:12]} of a key" in text  # what lists show to tell keys apart stays
    assert "cannot log in with [REDACTED]" in text  # the traceback too
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "d", (), None)
    record.detail = f"password={SMTP_PASSWORD}"
    RedactSecretsFilter().filter(record)
    assert record.detail == f"password={REDACTED}"


def test_secret_options_are_found_by_name_in_nested_tables():
    found = channel_secrets({**CHANNELS, "hook": {"OPTIONS": {"secret": "whsec-1234", "targets": {"a": "https://x"}}},
                             "esp": {"OPTIONS": {"connection": {"api_key": "xkeysib-99", "timeout": 5}}},
                             "slack": {"OPTIONS": {"token": "xoxb-1-2-3", "base_url": "https://slack.com/api"}},
                             "short": {"OPTIONS": {"token": "abc"}}})
    assert found == {TWILIO_TOKEN, SMTP_PASSWORD, "whsec-1234", "xkeysib-99", "xoxb-1-2-3"}


def test_settings_install_the_filter_on_the_root_handler_and_route_django_logs_through_it():
    # (pytest adds capture handlers of its own next to the configured one)
    configured = [h for h in logging.getLogger().handlers if any(isinstance(f, RedactSecretsFilter) for f in h.filters)]
    assert len(configured) == 1 and type(configured[0]) is logging.StreamHandler
    assert logging.getLogger("django").handlers == [] and logging.getLogger("django").propagate


@pytest.fixture(autouse=True)
def _no_leftover_loggers():
    yield
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("tests.logging.")]:
        logging.getLogger(name).handlers.clear()
