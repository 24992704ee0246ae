"""The email channel against real protocol peers on loopback.

- SMTP: an aiosmtpd server in this process receives the message (and refuses some recipients
  with 550 or 451, as a real MTA does); raw sockets play a server that hangs up or never greets.
- ESP: Anymail's Brevo backend, pointed through `api_url` at a local HTTP server that answers
  as Brevo's POST /v3/smtp/email does (201 {"messageId"}, 400/401 {"code", "message"}, 429 with
  Retry-After or x-sib-ratelimit-reset, 500, a slow answer, a dropped connection).
- End to end: a real dispatcher process sends through both and records the message ids.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import pytest
from aiosmtpd.controller import Controller

from channels.backends.email import EmailChannel
from channels.base import Message
from channels.errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError
from notifications.models import Notification

from .provider_standins import (
    HTTPStandIn,
    Reply,
    build_from_toml,
    enqueue_one,
    failure,
    fast_retries,
    free_port,
    history,
    one_channel_toml,
    start_dispatcher,
    wait_until_settled,
)

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
BREVO_BACKEND = "anymail.backends.brevo.EmailBackend"
BREVO_KEY = "xkeysib-test-key"


def msg(to: str, body: str = "Your code is 123456", subject: str = "Sign-in code", **kwargs) -> Message:
    return Message(recipient=to, body=body, subject=subject, notification_id=kwargs.pop("notification_id", str(uuid.uuid4())), **kwargs)


# --- an SMTP server (aiosmtpd) -------------------------------------------------------------------


class MailSink:
    """aiosmtpd handler: refuses local parts starting "refuse" (550) or "later" (451) at RCPT,
    and "baddata" (554) at DATA; keeps everything else."""

    def __init__(self):
        self.received: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("refuse"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        if local.startswith("later"):
            return f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        if any(r.startswith("baddata") for r in envelope.rcpt_tos):
            return "554 5.7.1 Message rejected as spam"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 Ok: queued"

    def by_recipient(self, address: str):
        return [entry for entry in self.received if address in entry[1]]


@pytest.fixture(scope="module")
def smtp_server():
    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, sink
    controller.stop()


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


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class BrevoStandIn(HTTPStandIn):
    """Answers as POST /v3/smtp/email does; what it answers depends on the recipient's local part."""

    protocol_version = "HTTP/1.1"
    json_content_type = text_content_type = "application/json; charset=utf-8"

    def __init__(self):
        self.seen: dict[str, int] = {}
        super().__init__()

    def parse(self, path, headers, raw) -> Request:
        return Request("POST", path, {k.lower(): v for k, v in headers.items()}, raw)

    def answer(self, request: Request) -> Reply:
        if request.path != "/v3/smtp/email":
            return Reply(404, {"code": "not_found", "message": "Invalid route"})
        if request.headers.get("api-key") != BREVO_KEY:
            return Reply(401, {"code": "unauthorized", "message": "Key not found"})
        to = request.json()["to"][0]["email"]
        local = to.split("@")[0]
        self.seen[to] = self.seen.get(to, 0) + 1
        accepted = Reply(201, {"messageId": f"<{uuid.uuid4().hex}@smtp-relay.mailin.fr>"})
        if local.startswith("invalid"):
            return Reply(400, {"code": "invalid_parameter", "message": "email is not valid in to"})
        if local.startswith("ratelimited"):
            return Reply(429, {"code": "too_many_requests", "message": "The expected rate limit is exceeded."},
                         {"Retry-After": "7", "x-sib-ratelimit-limit": "1000", "x-sib-ratelimit-remaining": "0", "x-sib-ratelimit-reset": "7"})
        if local.startswith("sibreset"):
            return Reply(429, {"code": "too_many_requests", "message": "The expected rate limit is exceeded."},
                         {"x-sib-ratelimit-remaining": "0", "x-sib-ratelimit-reset": "3"})
        if local.startswith("flaky") and self.seen[to] == 1:
            return Reply(429, {"code": "too_many_requests", "message": "The expected rate limit is exceeded."}, {"Retry-After": "1"})
        if local.startswith("down"):
            return Reply(500, {"code": "internal_error", "message": "Internal server error"})
        if local.startswith("slow"):
            return Reply(201, {"messageId": "<late@smtp-relay.mailin.fr>"}, delay=1.0)
        if local.startswith("drop"):
            return Reply(0, drop=True)
        if local.startswith("garbled"):
            return Reply(201, b"<html>gateway says ok</html>")
        return accepted


@pytest.fixture
def brevo():
    with BrevoStandIn() as stand_in:
        yield stand_in


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


# --- end to end: a dispatcher process sends through both email channels --------------------------


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
