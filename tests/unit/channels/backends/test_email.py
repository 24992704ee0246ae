"""The email channel against real protocol peers on loopback (tests/provider_standins/email.py).

- SMTP: an aiosmtpd server in this process receives the message (and refuses some recipients
  with 550 or 451, as a real MTA does); raw sockets play a server that hangs up or never greets.
- ESP: Anymail's Brevo backend, pointed through `api_url` at a local HTTP server that answers
  as Brevo's POST /v3/smtp/email does (201 {"messageId"}, 400/401 {"code", "message"}, 429 with
  Retry-After or x-sib-ratelimit-reset, 500, a slow answer, a dropped connection).

A message with an HTML part (rendered from a template) goes out as multipart/alternative over
SMTP (text/plain, then text/html) and as Brevo's textContent and htmlContent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest

from channels.backends.email import EmailChannel
from channels.base import Message
from channels.errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError
from tests.helpers import free_port
from tests.provider_standins import build_from_toml, failure, one_channel_toml
from tests.provider_standins.email import BREVO_BACKEND, BREVO_KEY, SMTP_BACKEND, BrevoStandIn


def msg(to: str, body: str = "Your code is 123456", subject: str = "Sign-in code", **kwargs) -> Message:
    return Message(recipient=to, body=body, subject=subject, notification_id=kwargs.pop("notification_id", str(uuid.uuid4())), **kwargs)


# --- SMTP, against an aiosmtpd server (tests/provider_standins/email.py) -------------------------


def smtp_channel(port: int, **options) -> EmailChannel:
    options.setdefault("from_email", "Notifications <notify@example.com>")
    return EmailChannel("email-local", backend=SMTP_BACKEND, connection={"host": "127.0.0.1", "port": port}, **options)


@contextlib.contextmanager
def raw_server(behaviour: Callable[[socket.socket], None]):
    """A TCP server whose each connection gets `behaviour` (hang up, stay silent, ...)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            connections.append(conn)
            behaviour(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in connections:
            conn.close()
        listener.close()


class TestSMTP:
    def test_the_server_receives_sender_recipient_subject_and_body(self, smtp_server):
        controller, sink = smtp_server
        channel = smtp_channel(controller.port)
        message = channel.validate(msg("alice@example.com", body="Hello Alice,\nyour code is 123456.", subject="Sign-in code"))
        provider_id = channel.deliver(message)

        (mail_from, rcpt_tos, received), = sink.by_recipient("alice@example.com")
        assert mail_from == "notify@example.com" and rcpt_tos == ["alice@example.com"]
        assert received["From"] == "Notifications <notify@example.com>"
        assert received["To"] == "alice@example.com"
        assert received["Subject"] == "Sign-in code"
        assert received.get_content_type() == "text/plain"
        assert received.get_content().replace("\r\n", "\n").rstrip("\n") == "Hello Alice,\nyour code is 123456."
        # the message id is the Message-ID we generated, on the sender's domain
        assert provider_id == received["Message-ID"] and provider_id.endswith("@example.com>")
        assert received["X-Notify-Notification-Id"] == message.notification_id

    def test_a_message_with_html_goes_out_as_multipart_alternative(self, smtp_server):
        # What a templated notification carries: the text, and its HTML part (Message.html).
        controller, sink = smtp_server
        html = "<p>Hello Ann &lt;3, order <b>A-1</b> is on its way. Grüße ☕</p>"
        message = msg("html-ann@example.com", body="Hello Ann <3, order A-1 is on its way. Grüße ☕",
                      subject="Your order A-1 has shipped", html=html)
        provider_id = smtp_channel(controller.port).deliver(message)

        (_, _, received), = sink.by_recipient("html-ann@example.com")
        assert received.get_content_type() == "multipart/alternative" and received.is_multipart()
        assert received["Subject"] == "Your order A-1 has shipped" and received["Message-ID"] == provider_id
        text, rich = received.iter_parts()  # in this order: a client shows the last part it can
        assert (text.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
        assert text.get_content_charset() == rich.get_content_charset() == "utf-8"
        assert text.get_content().replace("\r\n", "\n").rstrip("\n") == message.body
        assert rich.get_content().replace("\r\n", "\n").rstrip("\n") == html

    def test_a_message_without_html_stays_a_single_text_part(self, smtp_server):
        controller, sink = smtp_server
        smtp_channel(controller.port).deliver(msg("plain-ann@example.com", body="Just text"))
        (_, _, received), = sink.by_recipient("plain-ann@example.com")
        assert received.get_content_type() == "text/plain" and not received.is_multipart()

    def test_non_ascii_subject_and_body(self, smtp_server):
        controller, sink = smtp_server
        smtp_channel(controller.port).deliver(msg("zoe@example.com", body="Grüße, 你好", subject="Café ☕"))
        (_, _, received), = sink.by_recipient("zoe@example.com")
        assert received["Subject"] == "Café ☕" and received.get_content().strip() == "Grüße, 你好"

    def test_from_override_in_metadata_only_when_allowed(self, smtp_server):
        controller, sink = smtp_server
        strict = smtp_channel(controller.port)
        with pytest.raises(InvalidMessage) as refused:
            strict.validate(msg("bob@example.com", metadata={"from_email": "ceo@example.com"}))
        assert refused.value.field == "metadata" and "from_email" in refused.value.message

        lenient = smtp_channel(controller.port, allow_from_override=True)
        with pytest.raises(InvalidMessage) as invalid:
            lenient.validate(msg("bob@example.com", metadata={"from_email": "not an address"}))
        assert invalid.value.field == "metadata"
        with pytest.raises(InvalidMessage):
            lenient.validate(msg("bob@example.com", metadata={"from_email": "a@example.com\r\nBcc: x@example.com"}))

        lenient.deliver(lenient.validate(msg("bob@example.com", metadata={"from_email": "Billing <billing@example.com>"})))
        (mail_from, _, received), = sink.by_recipient("bob@example.com")
        assert mail_from == "billing@example.com" and received["From"] == "Billing <billing@example.com>"

    def test_intake_validation_is_the_email_rules(self, smtp_server):
        channel = smtp_channel(smtp_server[0].port)
        assert channel.validate(msg("Carol@EXAMPLE.com")).recipient == "Carol@example.com"
        assert pytest.raises(InvalidMessage, channel.validate, msg("carol@")).value.field == "to"
        assert pytest.raises(InvalidMessage, channel.validate, msg("c@example.com", subject="a\nb")).value.field == "subject"

    def test_recipient_refused_with_550_is_permanent(self, smtp_server):
        controller, sink = smtp_server
        error = failure(smtp_channel(controller.port), msg("refuse-dave@example.com"), PermanentChannelError)
        assert error.status == 550 and "User unknown" in str(error) and "refuse-dave@example.com" in str(error)
        assert not sink.by_recipient("refuse-dave@example.com")

    def test_recipient_deferred_with_451_is_transient(self, smtp_server):
        controller, _ = smtp_server
        error = failure(smtp_channel(controller.port), msg("later-erin@example.com"), TransientChannelError)
        assert error.status == 451 and "Greylisted" in str(error)

    def test_message_rejected_at_data_with_554_is_permanent(self, smtp_server):
        controller, _ = smtp_server
        error = failure(smtp_channel(controller.port), msg("baddata@example.com"), PermanentChannelError)
        assert error.status == 554 and "spam" in str(error)

    def test_server_not_listening_is_transient(self):
        error = failure(smtp_channel(free_port()), msg("frank@example.com"), TransientChannelError)
        assert "cannot reach the mail server" in str(error)

    def test_server_hanging_up_is_transient(self):
        with raw_server(lambda conn: conn.close()) as port:
            error = failure(smtp_channel(port), msg("gina@example.com"), TransientChannelError)
        assert "closed the connection" in str(error)

    def test_server_that_never_answers_is_transient_within_the_timeout(self):
        with raw_server(lambda conn: None) as port:  # accepts, never greets
            channel = smtp_channel(port, timeout=0.3)
            started = time.monotonic()
            error = failure(channel, msg("hank@example.com"), TransientChannelError)
        # The socket's timeout or the send's deadline, whichever fires first: the same moment.
        assert time.monotonic() - started < 2
        assert "timed out" in str(error) or "did not answer within 0.3s" in str(error)
        assert channel.send_timeout == 0.3

    def test_concurrent_sends_through_one_channel(self, smtp_server):
        controller, sink = smtp_server
        channel = smtp_channel(controller.port)
        recipients = [f"team{i}@example.com" for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda to: channel.deliver(msg(to, body=f"for {to}")), recipients))
        assert len(set(ids)) == 8
        for to, provider_id in zip(recipients, ids):
            (_, _, received), = sink.by_recipient(to)
            assert received["Message-ID"] == provider_id and received.get_content().strip() == f"for {to}"


# --- Brevo's transactional email API, through Anymail --------------------------------------------


def brevo_channel(stand_in: BrevoStandIn, api_key: str = BREVO_KEY, **options) -> EmailChannel:
    options.setdefault("from_email", "Notifications <notify@example.com>")
    connection = {"api_key": api_key, "api_url": f"http://127.0.0.1:{stand_in.port}/v3/"}
    return EmailChannel("email", backend=BREVO_BACKEND, connection=connection, **options)


class TestBrevo:
    def test_accepted_returns_brevos_message_id(self, brevo):
        message = msg("alice@example.com", body="Your code is 123456", subject="Sign-in code")
        provider_id = brevo_channel(brevo).deliver(message)

        (request,) = brevo.requests
        assert request.path == "/v3/smtp/email" and request.headers["api-key"] == BREVO_KEY
        payload = request.json()
        assert payload["sender"] == {"name": "Notifications", "email": "notify@example.com"}
        assert payload["to"] == [{"email": "alice@example.com"}]
        assert payload["subject"] == "Sign-in code" and payload["textContent"] == "Your code is 123456"
        assert payload["headers"]["X-Notify-Notification-Id"] == message.notification_id
        assert provider_id.endswith("@smtp-relay.mailin.fr>") and len(provider_id) > 30

    def test_a_message_with_html_sends_both_html_and_text_content(self, brevo):
        html = "<p>Hello Ann &lt;3, order <b>A-1</b> is on its way.</p>"
        message = msg("html-ann@example.com", body="Hello Ann <3, order A-1 is on its way.",
                      subject="Your order A-1 has shipped", html=html)
        brevo_channel(brevo).deliver(message)

        (request,) = brevo.requests
        payload = request.json()
        assert payload["htmlContent"] == html and payload["textContent"] == message.body
        assert payload["subject"] == "Your order A-1 has shipped"

    def test_a_message_without_html_sends_text_content_only(self, brevo):
        brevo_channel(brevo).deliver(msg("plain-ann@example.com", body="Just text"))
        (request,) = brevo.requests
        assert request.json()["textContent"] == "Just text" and "htmlContent" not in request.json()

    def test_invalid_parameter_400_is_permanent(self, brevo):
        error = failure(brevo_channel(brevo), msg("invalid@example.com"), PermanentChannelError)
        assert error.status == 400 and "invalid_parameter: email is not valid in to" in str(error)

    def test_unknown_api_key_401_is_permanent(self, brevo):
        error = failure(brevo_channel(brevo, api_key="xkeysib-revoked"), msg("alice@example.com"), PermanentChannelError)
        assert error.status == 401 and "unauthorized: Key not found" in str(error)

    def test_429_is_transient_with_retry_after(self, brevo):
        error = failure(brevo_channel(brevo), msg("ratelimited@example.com"), TransientChannelError)
        assert error.status == 429 and error.retry_after == 7

    def test_429_without_retry_after_uses_brevos_ratelimit_reset(self, brevo):
        error = failure(brevo_channel(brevo), msg("sibreset@example.com"), TransientChannelError)
        assert error.retry_after == 3

    def test_500_is_transient(self, brevo):
        error = failure(brevo_channel(brevo), msg("down@example.com"), TransientChannelError)
        assert error.status == 500 and error.retry_after is None

    def test_a_slow_answer_past_the_timeout_is_transient(self, brevo):
        channel = brevo_channel(brevo, timeout=0.3)
        started = time.monotonic()
        error = failure(channel, msg("slow@example.com"), TransientChannelError)
        assert time.monotonic() - started < 1.0 and "did not answer within 0.3s" in str(error)

    def test_a_dropped_connection_is_transient(self, brevo):
        error = failure(brevo_channel(brevo), msg("drop@example.com"), TransientChannelError)
        assert "cannot reach Brevo" in str(error)

    def test_brevo_not_listening_is_transient(self):
        channel = EmailChannel(
            "email", backend=BREVO_BACKEND, from_email="notify@example.com",
            connection={"api_key": BREVO_KEY, "api_url": f"http://127.0.0.1:{free_port()}/v3/"},
        )
        failure(channel, msg("alice@example.com"), TransientChannelError)

    def test_accepted_with_an_unreadable_answer_counts_as_sent(self, brevo):
        # 201: Brevo took the message; retrying would send it twice.
        assert brevo_channel(brevo).deliver(msg("garbled@example.com")) == ""

    def test_api_url_defaults_to_brevo(self):
        channel = EmailChannel("email", backend=BREVO_BACKEND, from_email="n@example.com", connection={"api_key": "xkeysib-secret"})
        assert channel._new_backend().api_url == "https://api.brevo.com/v3/"
        assert "xkeysib" not in json.dumps(channel.describe())


# --- configuration ------------------------------------------------------------------------------


class TestConfiguration:
    def build(self, channels_file, options: str) -> dict:
        return build_from_toml(channels_file(one_channel_toml("email", "channels.backends.email.EmailChannel", options)))

    def test_a_brevo_channel_from_the_channels_file(self, channels_file, monkeypatch):
        monkeypatch.setenv("BREVO_API_KEY", "xkeysib-from-env")
        channels = self.build(channels_file, f'backend = "{BREVO_BACKEND}"\nfrom_email = "n@example.com"\nconnection = {{ api_key = "${{BREVO_API_KEY}}" }}')
        channel = channels["email"]
        assert channel.kind == "email" and channel._new_backend().api_key == "xkeysib-from-env"
        assert channel.send_timeout == 10
        described = channel.describe()
        assert described["limits"] == {"subject_max_chars": 998} and "xkeysib" not in json.dumps(described)

    def test_missing_api_key_variable_names_channel_and_variable(self, channels_file, monkeypatch):
        monkeypatch.delenv("BREVO_API_KEY", raising=False)
        with pytest.raises(ChannelConfigurationError, match=r"channel 'email'.*BREVO_API_KEY"):
            self.build(channels_file, f'backend = "{BREVO_BACKEND}"\nfrom_email = "n@example.com"\nconnection = {{ api_key = "${{BREVO_API_KEY}}" }}')

    @pytest.mark.parametrize(
        "options, complaint",
        [
            ('backend = "anymail.backends.brevo.EmailBackend"\nfrom_email = "n@example.com"', "BREVO_API_KEY"),
            ('backend = "anymail.backends.brevo.EmailBackend"\nfrom_email = "n@example.com"\nconnection = { api_key = "" }', "api_key is empty"),
            ('backend = "anymail.backends.nosuchesp.EmailBackend"\nfrom_email = "n@example.com"', "cannot import email backend"),
            ('backend = "channels.backends.fake.FakeChannel"\nfrom_email = "n@example.com"', "not a Django email backend"),
            ('connection = { host = "localhost" }', "from_email"),
            ('from_email = "not-an-address"', "from_email 'not-an-address' is not valid"),
            ('from_email = "n@example.com"\nconnection = { hots = "smtp.example.com" }', "unknown SMTP connection option"),
            ('from_email = "n@example.com"\nconnection = { use_tls = true, use_ssl = true }', "mutually exclusive"),
            ('from_email = "n@example.com"\ntimeout = 0', "timeout"),
        ],
    )
    def test_bad_configuration_stops_start_up_naming_the_problem(self, channels_file, options, complaint):
        with pytest.raises(ChannelConfigurationError, match="channel 'email'") as caught:
            self.build(channels_file, options)
        assert complaint in str(caught.value)
