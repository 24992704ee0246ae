"""The email channel end to end: a real dispatcher process on the test database sends through
an SMTP server and the Brevo stand-in (tests/provider_standins/email.py) in this process, and
records their message ids; a templated notification goes out as text and HTML alternatives."""

from __future__ import annotations

from django.conf import settings
from django.test import override_settings

from channels.config import load_channels_file
from notifications import template_store
from notifications.models import Notification
from tests.api_helpers import URL
from tests.helpers import (
    enqueue_one,
    fast_retries,
    history,
    make_api_client,
    start_dispatcher,
    tenant,
    wait_until_settled,
)
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


def test_a_templated_notification_reaches_smtp_as_multipart_alternative(start_dispatchers, channels_file, smtp_server):
    """From the API to the SMTP server: rendered at the intake (text and HTML), stored, sent by a
    dispatcher process as text/plain and text/html alternatives."""
    controller, sink = smtp_server
    toml = f"""
[channels.email-local]
backend = "channels.backends.email.EmailChannel"
[channels.email-local.options]
backend = "{SMTP_BACKEND}"
from_email = "Notifications <notify@example.com>"
connection = {{ host = "127.0.0.1", port = {controller.port} }}
"""
    # The API (this process) and the dispatcher (a process of its own) know the same channel.
    path = channels_file(toml)
    with override_settings(NOTIFICATION_CHANNELS={**settings.NOTIFICATION_CHANNELS, **load_channels_file(path)}):
        api = make_api_client("shop")
        template_store.template_create(
            client=tenant("shop"), name="order-shipped", content=template_store.TemplateContent(
                locale="en", translations={}, variants={"email": {
                    "subject": "Your order {{ order_id }} has shipped",
                    "text": "Hello {{ name }}, order {{ order_id }} is on its way.",
                    "html": "<p>Hello {{ name }}, order <b>{{ order_id }}</b> is on its way.</p>"}}))
        answer = api.post(URL, {"channel": "email-local", "to": "templated@example.com", "template": "order-shipped",
                                "data": {"order_id": "A-1", "name": "Ann <3"}}, format="json")
    assert answer.status_code == 202, answer.content
    start_dispatchers("--processes", "1", channels_file=path)

    wait_until_settled([answer.json()["id"]], message="the templated notification sent")
    (_, _, received), = sink.by_recipient("templated@example.com")
    assert received.get_content_type() == "multipart/alternative"
    assert received["Subject"] == "Your order A-1 has shipped"
    text, html = received.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert text.get_content().strip() == "Hello Ann <3, order A-1 is on its way."
    assert html.get_content().strip() == "<p>Hello Ann &lt;3, order <b>A-1</b> is on its way.</p>"
    assert Notification.objects.get(pk=answer.json()["id"]).provider_message_id == received["Message-ID"]
