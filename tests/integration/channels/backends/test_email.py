"""The email channel end to end: a real dispatcher process on the test database sends through
an SMTP server and the Brevo stand-in (tests/provider_standins/email.py) in this process, and
records their message ids."""

from __future__ import annotations

from notifications.models import Notification
from tests.helpers import enqueue_one, fast_retries, history, start_dispatcher, wait_until_settled
from tests.provider_standins.email import BREVO_BACKEND, BREVO_KEY, SMTP_BACKEND

FAST_RETRIES = fast_retries("0.2", "0.5", max_attempts="4")


def enqueue(channel: str, to: str, subject: str, body: str) -> str:
    return enqueue_one(channel, to, body, subject=subject)


def test_a_dispatcher_sends_through_smtp_and_brevo_and_records_their_message_ids(
    start_dispatchers, channels_file, smtp_server, brevo
):
    controller, sink = smtp_server
    toml = (
        f"""
[channels.email-local]
backend = "channels.backends.email.EmailChannel"
[channels.email-local.options]
backend = "{SMTP_BACKEND}"
from_email = "Notifications <notify@example.com>"
connection = {{ host = "127.0.0.1", port = {controller.port} }}

[channels.email]
backend = "channels.backends.email.EmailChannel"
[channels.email.options]
backend = "{BREVO_BACKEND}"
from_email = "notify@example.com"
timeout = 5
connection = {{ api_key = "${{TEST_BREVO_API_KEY}}", api_url = "http://127.0.0.1:{brevo.port}/v3/" }}
"""
    )
    local = enqueue("email-local", "e2e-local@example.com", "Via SMTP", "Hello over SMTP")
    esp = enqueue("email", "e2e-esp@example.com", "Via Brevo", "Hello over Brevo")
    flaky = enqueue("email", "flaky@example.com", "Rate limited once", "Hello again")
    rejected = enqueue("email", "invalid@example.com", "Refused", "Never sent")
    start_dispatcher(start_dispatchers, channels_file, toml, {"TEST_BREVO_API_KEY": BREVO_KEY, **FAST_RETRIES})

    wait_until_settled([local, esp, flaky, rejected], message="all four settled")

    # SMTP: the recorded id is the Message-ID the server received
    (_, _, received), = sink.by_recipient("e2e-local@example.com")
    assert received["Subject"] == "Via SMTP" and received.get_content().strip() == "Hello over SMTP"
    assert [(e.status, e.attempt, e.provider_message_id) for e in history(local)] == [
        ("queued", 0, ""), ("sent", 1, received["Message-ID"])
    ]
    assert Notification.objects.get(pk=local).provider_message_id == received["Message-ID"]

    # Brevo: the recorded id is the messageId Brevo answered
    (sent,) = [e for e in history(esp) if e.status == "sent"]
    assert sent.provider_message_id.endswith("@smtp-relay.mailin.fr>")
    (request,) = [r for r in brevo.requests if r.json()["to"][0]["email"] == "e2e-esp@example.com"]
    assert request.json()["subject"] == "Via Brevo" and request.json()["textContent"] == "Hello over Brevo"

    # a 429 with Retry-After: 1 is retried, not earlier than Brevo asked
    queued, retry, sent = history(flaky)
    assert (retry.status, retry.attempt, sent.status, sent.attempt) == ("retrying", 1, "sent", 2)
    assert "HTTP 429" in retry.error and (sent.created_at - retry.created_at).total_seconds() >= 1
    assert sent.provider_message_id.endswith("@smtp-relay.mailin.fr>")

    # a 400 fails at once
    assert [(e.status, e.attempt) for e in history(rejected)] == [("queued", 0), ("failed", 1)]
    assert "invalid_parameter" in Notification.objects.get(pk=rejected).last_error
