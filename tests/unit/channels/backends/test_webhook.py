"""The webhook channel against a real HTTP receiver on loopback (tests/provider_standins/webhook.py).

The receiver (http.server in a thread) verifies every request's signature with the channel's
secret, as a real receiver would, and answers with the status a test asks for. Private-address
refusal is shown on 127.0.0.1 (refused, then allowed with allow_private_targets) and, for other
private ranges, without any connection being made: a tripwire fails the test if anything tries
to connect to an address other than loopback. Host names are resolved by the system resolver,
except names under .test, which a stand-in resolver answers (as a DNS server would).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import urllib3.util.connection

from channels.backends.webhook import WebhookChannel, address_problem, sign
from channels.base import Message
from channels.errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError
from tests.helpers import free_port
from tests.provider_standins import Reply, build_from_toml, failure, one_channel_toml
from tests.provider_standins.webhook import SECRET, Receiver


def msg(to: str, body: str = "Deploy finished", **kwargs) -> Message:
    kwargs.setdefault("notification_id", str(uuid.uuid4()))
    return Message(recipient=to, body=body, **kwargs)


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def channel_for(receiver: Receiver | None = None, **options) -> WebhookChannel:
    options.setdefault("secret", SECRET)
    options.setdefault("allow_private_targets", True)  # the receiver is on loopback
    if receiver is not None:
        options.setdefault("targets", {"ops": receiver.url})
    return WebhookChannel("webhook", **options)


# --- network guards -----------------------------------------------------------------------------


@pytest.fixture
def connections(monkeypatch):
    """Every address a connection is attempted to. Fails the test at once, before any packet,
    on an attempt to reach anything but loopback."""
    attempts: list[str] = []
    real = urllib3.util.connection.create_connection

    def tripwire(address, *args, **kwargs):
        host = address[0].strip("[]")
        attempts.append(host)
        if host not in ("127.0.0.1", "::1"):
            pytest.fail(f"a connection to {host} was attempted")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", tripwire)
    return attempts


@pytest.fixture
def dns(monkeypatch):
    """A stand-in resolver for names under .test: `dns[name] = [addresses...]` or a callable
    returning them per look-up. Records every look-up of such a name."""
    answers: dict[str, object] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if isinstance(host, str) and host.endswith(".test"):
            lookups.append(host)
            answer = answers[host]
            addresses = answer() if callable(answer) else answer
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port))
                for a in addresses
            ]
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    answers["lookups"] = lookups
    return answers


# --- sending ------------------------------------------------------------------------------------


class TestSend:
    def test_the_receiver_verifies_the_signature_and_gets_the_notification(self, receiver):
        message = msg("ops", body="Deploy finished", subject="deploy", metadata={"build": 42}, attempt=2)
        provider_id = channel_for(receiver).deliver(message)

        (request,) = receiver.received
        assert request.signature_valid
        assert request.headers["content-type"].startswith("application/json")
        assert request.headers["x-notify-notification-id"] == message.notification_id
        assert request.headers["x-notify-signature"] == sign(SECRET, request.headers["x-notify-timestamp"], request.body)
        payload = request.json()
        assert {k: v for k, v in payload.items() if k != "sent_at"} == {
            "id": message.notification_id, "to": "ops", "subject": "deploy", "message": "Deploy finished",
            "metadata": {"build": 42}, "attempt": 2,
        }
        assert abs(datetime.fromisoformat(payload["sent_at"].replace("Z", "+00:00")) - datetime.now(timezone.utc)) < timedelta(seconds=5)
        assert provider_id.startswith("rcv-")

    def test_a_receiver_with_another_secret_rejects_it_permanently(self):
        with Receiver(secret="another-secret") as strict:
            error = failure(channel_for(strict), msg("ops"), PermanentChannelError)
        assert error.status == 401 and not strict.received[0].signature_valid

    def test_non_ascii_text_is_sent_as_utf8_json(self, receiver):
        channel_for(receiver).deliver(msg("ops", body="Grüße ✓", metadata={"who": "Zoë"}))
        assert receiver.received[0].json()["message"] == "Grüße ✓" and receiver.received[0].json()["metadata"] == {"who": "Zoë"}

    @pytest.mark.parametrize(
        "reply, provider_id",
        [
            (Reply(200, {"id": "evt_123"}), "evt_123"),
            (Reply(201, {"id": 987}), "987"),
            (Reply(202, {"ok": True}, {"X-Request-Id": "req-abc"}), "req-abc"),
            (Reply(204), ""),
            (Reply(200, b"ok"), ""),
            (Reply(200, {"id": "x" * 400}), "x" * 255),
        ],
    )
    def test_2xx_is_sent_with_the_receivers_id(self, reply, provider_id):
        with Receiver(lambda r: reply) as receiver:
            assert channel_for(receiver).deliver(msg("ops")) == provider_id

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
    def test_other_4xx_is_permanent(self, status):
        with Receiver(lambda r: Reply(status, {"error": "nope"})) as receiver:
            error = failure(channel_for(receiver), msg("ops"), PermanentChannelError)
        assert error.status == status and f"HTTP {status}" in str(error) and "nope" in str(error)

    def test_a_redirect_is_not_followed_and_is_permanent(self):
        with Receiver(lambda r: Reply(302, headers={"Location": "http://10.0.0.1/internal"})) as receiver:
            error = failure(channel_for(receiver), msg("ops"), PermanentChannelError)
        assert error.status == 302 and len(receiver.received) == 1

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    def test_408_429_and_5xx_are_transient(self, status):
        with Receiver(lambda r: Reply(status)) as receiver:
            error = failure(channel_for(receiver), msg("ops"), TransientChannelError)
        assert error.status == status and error.retry_after is None

    def test_retry_after_in_seconds(self):
        with Receiver(lambda r: Reply(429, headers={"Retry-After": "30"})) as receiver:
            assert failure(channel_for(receiver), msg("ops"), TransientChannelError).retry_after == 30

    def test_retry_after_as_an_http_date(self):
        later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
        with Receiver(lambda r: Reply(503, headers={"Retry-After": later})) as receiver:
            retry_after = failure(channel_for(receiver), msg("ops"), TransientChannelError).retry_after
        assert 115 <= retry_after <= 120

    def test_a_slow_answer_past_the_timeout_is_transient(self):
        with Receiver(lambda r: Reply(200, delay=1.0)) as receiver:
            channel = channel_for(receiver, timeout=0.3)
            started = time.monotonic()
            error = failure(channel, msg("ops"), TransientChannelError)
        assert time.monotonic() - started < 1.0 and "did not answer within 0.3s" in str(error)
        assert channel.send_timeout == 0.3

    def test_a_dropped_connection_is_transient(self):
        with Receiver(lambda r: Reply(drop=True)) as receiver:
            error = failure(channel_for(receiver), msg("ops"), TransientChannelError)
        assert "cannot reach webhook 127.0.0.1" in str(error)

    def test_a_receiver_not_listening_is_transient(self):
        channel = channel_for(targets={"ops": f"http://127.0.0.1:{free_port()}/hook"})
        error = failure(channel, msg("ops"), TransientChannelError)
        assert "refused" in str(error).lower()

    def test_concurrent_sends_through_one_channel(self, receiver):
        channel = channel_for(receiver)
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda i: channel.deliver(msg("ops", body=f"n{i}")), range(16)))
        assert len(set(ids)) == 16 and len(receiver.received) == 16
        assert all(r.signature_valid for r in receiver.received)
        assert sorted(r.json()["message"] for r in receiver.received) == sorted(f"n{i}" for i in range(16))


# --- private addresses (server-side request forgery) --------------------------------------------


class TestPrivateAddresses:
    def test_loopback_is_refused_unless_private_targets_are_allowed(self, receiver, connections):
        strict = channel_for(allow_private_targets=False, allow_any_url=True, targets={})
        error = failure(strict, msg(receiver.url), PermanentChannelError)
        assert "127.0.0.1 is a loopback address" in str(error)
        assert receiver.received == [] and connections == []

        lenient = channel_for(allow_private_targets=True, allow_any_url=True, targets={})
        assert lenient.deliver(msg(receiver.url)).startswith("rcv-")
        assert len(receiver.received) == 1 and connections == ["127.0.0.1"]

    @pytest.mark.parametrize(
        "url",
        [
            "http://10.0.0.5/hook", "http://172.16.3.4/hook", "http://192.168.1.10/hook",
            "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/hook", "http://[fe80::1]/hook",
            "http://[fd00::1]/hook", "http://[::ffff:10.0.0.5]/hook", "http://0.0.0.0/hook", "http://224.0.0.1/hook",
            "http://100.64.0.1/hook", "http://localhost:8080/hook",
        ],
    )
    def test_private_literal_urls_are_refused_at_intake_and_at_send_without_connecting(self, url, connections):
        channel = channel_for(allow_private_targets=False, allow_any_url=True, targets={})
        with pytest.raises(InvalidMessage) as refused:
            channel.validate(msg(url))
        assert refused.value.field == "to" and "not allowed as a target" in refused.value.message
        failure(channel, msg(url), PermanentChannelError)  # (the options may change after intake)
        assert connections == []

    @pytest.mark.parametrize(
        "addresses",
        [["127.0.0.1"], ["10.0.0.5"], ["169.254.169.254"], ["::1"], ["::ffff:10.0.0.5"], ["fe80::1"],
         ["203.0.113.9"], ["8.8.8.8", "10.0.0.5"]],
    )
    def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(self, addresses, dns, connections):
        dns["hooks.internal.test"] = addresses
        channel = channel_for(allow_private_targets=False, targets={"ops": "http://hooks.internal.test/hook"})
        assert channel.validate(msg("ops")).recipient == "ops"  # a name: judged when it is resolved
        error = failure(channel, msg("ops"), PermanentChannelError)
        assert "hooks.internal.test resolves to a refused address" in str(error)
        assert connections == []  # every address is checked before any connection

    def test_the_connection_goes_to_the_address_resolved_once_with_the_original_host_header(self, receiver, dns, connections):
        # A rebinding name: first 127.0.0.1, then (were it asked again) an internal address.
        answers = iter([["127.0.0.1"]])
        dns["hooks.rebind.test"] = lambda: next(answers, ["10.66.0.1"])
        channel = channel_for(allow_private_targets=True, targets={"ops": f"http://hooks.rebind.test:{receiver.port}/hook"})
        assert channel.deliver(msg("ops")).startswith("rcv-")
        assert dns["lookups"] == ["hooks.rebind.test"] and connections == ["127.0.0.1"]
        assert receiver.received[0].headers["host"] == f"hooks.rebind.test:{receiver.port}"

    def test_each_send_resolves_afresh(self, receiver, dns, connections):
        dns["hooks.flip.test"] = ["127.0.0.1"]
        lenient = channel_for(allow_private_targets=True, targets={"ops": f"http://hooks.flip.test:{receiver.port}/hook"})
        lenient.deliver(msg("ops"))
        lenient.deliver(msg("ops"))
        assert dns["lookups"] == ["hooks.flip.test", "hooks.flip.test"]

    @pytest.mark.parametrize(
        "address, refused",
        [
            ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("::ffff:8.8.8.8", False),
            ("127.0.0.53", True), ("10.255.0.1", True), ("172.31.255.255", True), ("192.168.0.1", True),
            ("169.254.0.1", True), ("100.100.100.200", True), ("0.0.0.0", True), ("255.255.255.255", True),
            ("240.0.0.1", True), ("224.0.0.251", True), ("::", True), ("::1", True), ("fe80::1%eth0", True),
            ("fc00::1", True), ("ff02::1", True), ("::ffff:127.0.0.1", True), ("2002:a00:1::1", True),
            ("64:ff9b::a9fe:a9fe", True), ("2001:0:4136:e378:8000:63bf:f5ff:fffe", True),
        ],
    )
    def test_address_policy(self, address, refused):
        assert (address_problem(address) is not None) == refused


# --- intake and configuration -------------------------------------------------------------------


class TestIntakeAndConfiguration:
    def test_the_recipient_is_a_known_target(self):
        channel = channel_for(targets={"ops": "https://hooks.example.com/ops", "billing": "https://hooks.example.com/b"})
        assert channel.validate(msg("ops")).recipient == "ops"
        refused = pytest.raises(InvalidMessage, channel.validate, msg("sales")).value
        assert refused.field == "to" and "billing, ops" in refused.message
        # a URL is not a target unless the channel allows free URLs
        assert pytest.raises(InvalidMessage, channel.validate, msg("https://hooks.example.com/x")).value.field == "to"

    @pytest.mark.parametrize(
        "url, accepted",
        [
            ("https://hooks.example.com/notify?x=1", True), ("http://hooks.example.com:8080/n", True),
            ("ftp://hooks.example.com/x", False), ("https://user:pw@hooks.example.com/x", False),
            ("https:///nohost", False), ("https://hooks.example.com:99999/x", False),
            ("https://hooks.example.com/" + "x" * 2100, False),
        ],
    )
    def test_free_urls_when_allowed(self, url, accepted):
        channel = channel_for(allow_any_url=True, allow_private_targets=False, targets={})
        if accepted:
            assert channel.validate(msg(url)).recipient == url
        else:
            assert pytest.raises(InvalidMessage, channel.validate, msg(url)).value.field == "to"

    def build(self, channels_file, options: str) -> dict:
        return build_from_toml(channels_file(one_channel_toml("webhook", "channels.backends.webhook.WebhookChannel", options)))

    def test_from_the_channels_file_with_the_secret_from_the_environment(self, channels_file, monkeypatch):
        monkeypatch.setenv("WEBHOOK_SECRET", "from-env")
        channel = self.build(channels_file, 'secret = "${WEBHOOK_SECRET}"\ntargets = { ops = "https://hooks.example.com/T0KEN" }')["webhook"]
        assert channel.kind == "webhook" and channel.send_timeout == 10
        described = json.dumps(channel.describe())
        assert '"ops"' in described and "T0KEN" not in described and "from-env" not in described

    @pytest.mark.parametrize(
        "options, complaint",
        [
            ('targets = { ops = "https://hooks.example.com/" }', "secret"),
            ('secret = ""\ntargets = { ops = "https://hooks.example.com/" }', "secret must be a non-empty string"),
            ('secret = "s"', "nothing could be sent"),
            ('secret = "s"\ntargets = { ops = "gopher://hooks.example.com/" }', "target 'ops': not an http(s) URL"),
            ('secret = "s"\ntargets = { ops = "http://169.254.169.254/" }', "link-local address; not allowed"),
            ('secret = "s"\ntargets = { ops = "https://hooks.example.com/" }\ntimeout = -1', "timeout"),
            ('secret = "s"\ntargets = { ops = "https://hooks.example.com/" }\nretries = 3', "bad options"),
        ],
    )
    def test_bad_configuration_stops_start_up_naming_the_problem(self, channels_file, options, complaint):
        with pytest.raises(ChannelConfigurationError, match="channel 'webhook'") as caught:
            self.build(channels_file, options)
        assert complaint in str(caught.value)

    def test_missing_secret_variable_names_channel_and_variable(self, channels_file, monkeypatch):
        monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
        with pytest.raises(ChannelConfigurationError, match=r"channel 'webhook'.*WEBHOOK_SECRET"):
            self.build(channels_file, 'secret = "${WEBHOOK_SECRET}"\ntargets = { ops = "https://hooks.example.com/" }')
