"""Hostile and broken providers, against the base channel's send flow (channels/base.py,
channels/deadline.py, channels/provider_text.py): every backend, through the official SDKs,
against a loopback server that drips, never answers, never stops, answers megabytes, or
answers ids and errors no database or log could take.

What must hold for each: `deliver` returns or raises a ChannelError by the channel's deadline
(plus a little), what it returns is safe text, a 2xx the provider gave counts as sent where the
provider's protocol says so, and nothing is read past the answer cap.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from channels import deadline
from channels.backends.email import EmailChannel
from channels.backends.slack import SlackChannel
from channels.backends.twilio_sms import TwilioSmsChannel
from channels.backends.webhook import WebhookChannel
from channels.base import ANSWER_LIMIT, Message
from channels.deadline import AnswerTooLarge, CallCutOff, DeadlineExceeded, ProviderCall
from channels.errors import ChannelError, PermanentChannelError, TransientChannelError
from channels.provider_text import clean
from tests.provider_standins import HostileServer

TIMEOUT = 1.0
# The deadline, plus the second a send may take past it (the chaos run's bound too).
WITHIN = TIMEOUT + 1.0
SURROGATE_ID = b'{"id": "\\ud800prov\\u0000-1", "sid": "SM\\udfff1\\u0000", "ok": true, "ts": "17\\ud800.1", "channel": "C1\\u0000", "messageId": "<\\ud800@x>"}'


# --- the text a provider gives -------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("SM123", "SM123"),
    ("a\x00b", "a b"),
    ("\ud800x\udfff", "\ufffdx\ufffd"),
    ("line one\r\nforged: line\u2028two", "line one forged: line two"),
    ("\u202eevil\u2066", "evil"),
    (b"bytes \xff\xfe", "bytes \ufffd\ufffd"),
    (None, ""),
    (12345, "12345"),
])
def test_clean_text_has_no_nul_no_surrogate_no_control_and_is_one_line(value, expected):
    assert clean(value, limit=100) == expected
    clean(value, limit=100).encode("utf-8")  # always encodable


def test_clean_text_is_bounded_and_marks_the_cut_unless_an_id():
    huge = "x" * 10_000_000
    assert clean(huge, limit=1000) == "x" * 999 + "…"
    assert clean(huge, limit=255, mark_cut=False) == "x" * 255


# --- the deadline and the answer cap, on their own -----------------------------------------------


def http_post(port: int, timeout: float = 30) -> bytes:
    """A plain http.client exchange, as the SDKs make underneath."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/", body=b"{}")
        return connection.getresponse().read()
    finally:
        connection.close()


def test_a_call_returns_its_value_or_raises_its_own_exception():
    assert ProviderCall(timeout=1, answer_limit=100).run(lambda a, b: a + b, 1, 2) == 3
    with pytest.raises(KeyError):
        ProviderCall(timeout=1, answer_limit=100).run({}.__getitem__, "missing")


@pytest.mark.parametrize("answer", ["drip", "silent"])
def test_the_deadline_bounds_the_whole_exchange_and_the_abandoned_call_is_cut_off(answer):
    returned = threading.Event()

    def call(port):
        try:
            return http_post(port)  # 30 s socket timeouts: only the deadline can end it
        finally:
            returned.set()

    with HostileServer(answer, drip_seconds=0.2) as server:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            ProviderCall(timeout=TIMEOUT, answer_limit=ANSWER_LIMIT).run(call, server.port)
        assert TIMEOUT <= time.monotonic() - started < WITHIN
        # Its sockets were shut down: the call's own thread ends at once, not in 30 s.
        assert returned.wait(1.0)


def test_an_abandoned_call_can_open_no_more_connections():
    attempts: list[BaseException] = []
    finished = threading.Event()

    def call(port):
        time.sleep(TIMEOUT + 0.3)  # past the deadline: the caller has given up
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except BaseException as exc:
            attempts.append(exc)
        finally:
            finished.set()

    with HostileServer("silent") as server:
        with pytest.raises(DeadlineExceeded):
            ProviderCall(timeout=TIMEOUT, answer_limit=ANSWER_LIMIT).run(call, server.port)
        assert finished.wait(3)
    assert len(attempts) == 1 and isinstance(attempts[0], CallCutOff)
    assert server.connections == 0


def test_while_too_many_abandoned_calls_still_run_no_call_starts(monkeypatch):
    monkeypatch.setattr(deadline, "MAX_LINGERING", 2)
    monkeypatch.setattr(deadline, "_lingering", deadline._Count())
    release = threading.Event()
    try:
        for _ in range(2):  # stuck where they cannot be cut off (as a hanging name look-up)
            with pytest.raises(DeadlineExceeded):
                ProviderCall(timeout=0.1, answer_limit=ANSWER_LIMIT).run(release.wait)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="2 abandoned provider calls are still running"):
            ProviderCall(timeout=5, answer_limit=ANSWER_LIMIT).run(lambda: "never called")
        assert time.monotonic() - started < 0.1
    finally:
        release.set()
    # Once they end, calls start again.
    wait_until = time.monotonic() + 2
    while deadline._lingering.count and time.monotonic() < wait_until:
        time.sleep(0.01)
    assert ProviderCall(timeout=1, answer_limit=ANSWER_LIMIT).run(lambda: "ok") == "ok"


@pytest.mark.parametrize("answer", ["endless_body", "big_body"])
def test_reading_past_the_answer_cap_fails_at_once(answer):
    with HostileServer(answer) as server:
        started = time.monotonic()
        with pytest.raises(AnswerTooLarge):
            ProviderCall(timeout=10, answer_limit=64 * 1024).run(http_post, server.port)
        assert time.monotonic() - started < 2


def test_a_call_under_the_cap_reads_its_answer_whole():
    body = json.dumps({"id": "ok"}).encode()
    with HostileServer("raw", body=body) as server:
        assert ProviderCall(timeout=5, answer_limit=64 * 1024).run(http_post, server.port) == body


# --- every backend, against every hostile answer --------------------------------------------------


def webhook(url: str) -> WebhookChannel:
    return WebhookChannel("webhook", secret="s3cret", targets={"ops": url}, allow_private_targets=True, timeout=TIMEOUT)


def twilio(url: str) -> TwilioSmsChannel:
    return TwilioSmsChannel("sms", account_sid="AC" + "0" * 32, auth_token="token", from_number="+14155550100",
                            base_url=url, timeout=TIMEOUT)


def slack(url: str) -> SlackChannel:
    return SlackChannel("slack", token="xoxb-1", base_url=url + "/api/", timeout=TIMEOUT)


def brevo(url: str) -> EmailChannel:
    return EmailChannel("email", backend="anymail.backends.brevo.EmailBackend", from_email="n@example.com",
                        connection={"api_key": "key", "api_url": url + "/v3/"}, timeout=TIMEOUT)


BACKENDS = {"webhook": (webhook, "ops"), "twilio": (twilio, "+14155550199"), "slack": (slack, "C0123ABCD"),
            "brevo": (brevo, "alice@example.com")}
# Whether the provider's 2xx alone means it took the message (then an unreadable 2xx is sent).
TAKEN_ON_2XX = {"webhook": True, "twilio": True, "slack": False, "brevo": True}


def deliver(channel, to: str):
    """What `deliver` did, how long it took: ("sent", id) or (error class, text)."""
    started = time.monotonic()
    try:
        result = ("sent", channel.deliver(Message(recipient=to, body="hello", subject="hi", notification_id="n-1")))
    except ChannelError as exc:
        result = (type(exc), str(exc))
    return result, time.monotonic() - started


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("answer", ["drip", "silent", "huge_headers"])
def test_no_answer_in_time_is_transient_by_the_deadline(backend, answer):
    build, to = BACKENDS[backend]
    with HostileServer(answer, drip_seconds=0.2) as server:
        (kind, text), took = deliver(build(server.url), to)
    assert kind is TransientChannelError, text
    assert took < WITHIN


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("answer", ["endless_body", "big_body"])
def test_a_2xx_whose_body_is_too_large_is_sent_where_2xx_means_taken(backend, answer):
    build, to = BACKENDS[backend]
    status = 201 if backend in ("twilio", "brevo") else 200
    with HostileServer(answer, status=status) as server:
        (kind, text), took = deliver(build(server.url), to)
    assert took < WITHIN
    if TAKEN_ON_2XX[backend]:
        assert (kind, text) == ("sent", "")
    else:  # Slack says "ok": true in the body or nothing: a body it cannot read is no success
        assert kind is TransientChannelError, text


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_an_error_answer_that_never_ends_is_an_error_by_the_deadline(backend):
    build, to = BACKENDS[backend]
    with HostileServer("endless_body", status=503, content_type="text/plain") as server:
        (kind, text), took = deliver(build(server.url), to)
    assert kind is TransientChannelError and took < WITHIN


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_invalid_json_on_a_2xx(backend):
    build, to = BACKENDS[backend]
    status = 201 if backend in ("twilio", "brevo") else 200
    with HostileServer("raw", status=status, body=b"{not json\x00\xff") as server:
        (kind, text), _ = deliver(build(server.url), to)
    if TAKEN_ON_2XX[backend]:
        assert (kind, text) == ("sent", "")
    else:
        assert issubclass(kind, ChannelError)
        text.encode("utf-8")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_ids_with_nul_and_lone_surrogates_come_out_as_safe_text(backend):
    build, to = BACKENDS[backend]
    status = 201 if backend in ("twilio", "brevo") else 200
    with HostileServer("raw", status=status, body=SURROGATE_ID) as server:
        (kind, provider_id), _ = deliver(build(server.url), to)
    assert kind == "sent"
    assert "\x00" not in provider_id and "\ud800" not in provider_id and "\udfff" not in provider_id
    provider_id.encode("utf-8")
    expected = {"webhook": "\ufffdprov -1", "twilio": "SM\ufffd1", "slack": "C1 /17\ufffd.1", "brevo": "<\ufffd@x>"}
    assert provider_id == expected[backend]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_error_texts_with_nul_surrogates_and_megabytes_come_out_as_safe_bounded_text(backend):
    build, to = BACKENDS[backend]
    text = "\ud800 refused \u0000 " + "z" * 500_000
    body = json.dumps({"error": text, "message": text, "code": 20500, "more_info": text}).encode()
    with HostileServer("raw", status=500, body=body) as server:
        (kind, error), _ = deliver(build(server.url), to)
    assert kind is TransientChannelError
    assert "\x00" not in error and not any("\ud800" <= ch <= "\udfff" for ch in error)
    assert len(error) <= 1000 + 40  # the text and the provider's status
    error.encode("utf-8")


# --- SMTP -------------------------------------------------------------------------------------


class SMTPGreeter:
    """A server that greets without end: "220-" continuation lines, slowly or as fast as it can."""

    def __init__(self, *, every: float):
        self.every = every
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]

    def __enter__(self):
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._listener.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn):
        line = b"220-" + b"g" * 1000 + b"\r\n"
        try:
            while not self._stop.is_set():
                conn.sendall(line * (1 if self.every else 64))
                if self.every:
                    self._stop.wait(self.every)
        except OSError:
            pass
        finally:
            conn.close()


@pytest.mark.parametrize("every", [0.2, 0])
def test_an_smtp_server_that_never_ends_its_greeting_is_transient_by_the_deadline(every):
    with SMTPGreeter(every=every) as server:
        channel = EmailChannel("email-local", backend="django.core.mail.backends.smtp.EmailBackend",
                               from_email="n@example.com", connection={"host": "127.0.0.1", "port": server.port},
                               timeout=TIMEOUT)
        (kind, text), took = deliver(channel, "bob@example.com")
    assert kind is TransientChannelError and took < WITHIN
    if not every:  # as fast as it goes: the cap ends it before the deadline
        assert took < TIMEOUT / 2, text


# --- what a backend's own bug becomes --------------------------------------------------------------


def test_an_unexpected_exception_is_permanent_and_a_network_one_transient():
    class Buggy(WebhookChannel):
        def send(self, message):
            raise {"bug": ValueError("bad \ud800 value"), "net": ConnectionResetError("reset \x00")}[message.body]

    channel = Buggy("buggy", secret="s", targets={"ops": "http://127.0.0.1:9/"}, allow_private_targets=True)
    with pytest.raises(PermanentChannelError) as bug:
        channel.deliver(Message(recipient="ops", body="bug"))
    assert str(bug.value) == "unexpected ValueError: bad \ufffd value"
    with pytest.raises(TransientChannelError) as net:
        channel.deliver(Message(recipient="ops", body="net"))
    assert str(net.value) == "cannot reach the provider: ConnectionResetError: reset"


def test_a_name_look_up_that_hangs_counts_within_the_deadline(monkeypatch):
    # The resolver is outside the machine: it is played here by a getaddrinfo that takes 5 s.
    real = socket.getaddrinfo
    looked_up = threading.Event()

    def slow_dns(host, *args, **kwargs):
        if host == "hang.example":
            looked_up.set()
            time.sleep(5)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    channel = WebhookChannel("webhook", secret="s", targets={"ops": "http://hang.example/hook"}, timeout=TIMEOUT)
    (kind, text), took = deliver(channel, "ops")
    assert looked_up.is_set() and kind is TransientChannelError and took < WITHIN, text
