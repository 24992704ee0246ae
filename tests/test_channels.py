"""Channels: validation rules, the channels file, the registry, the system check, a new
channel added by configuration, and the fake backend. No network."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from channels import registry
from channels.apps import check_channels
from channels.backends.fake import FakeChannel
from channels.base import Message
from channels.config import load_channels_file
from channels.errors import (
    ChannelConfigurationError,
    InvalidMessage,
    PermanentChannelError,
    TransientChannelError,
)
from channels.validation import validate_email_message, validate_slack_message, validate_sms_message
from notifications.models import Notification
from outbox.models import OutboxEntry

from .conftest import make_api_client


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


# --- the channels file ----------------------------------------------------------------------


def test_channels_file_expands_environment_variables(channels_file, monkeypatch):
    monkeypatch.setenv("TEST_PAGER_KEY", "s3cret")
    monkeypatch.setenv("TEST_REGION", "eu")
    path = channels_file(
        """
        [channels.pager]
        backend = "tests.channel_backends.PagerChannel"
        options = { service_key = "${TEST_PAGER_KEY}" }

        [channels.other]
        backend = "channels.backends.fake.FakeChannel"
        [channels.other.options]
        endpoint = "https://${TEST_REGION}.example.com/v1"
        nested = { list = ["${TEST_REGION}", 3], flag = true }
        """
    )
    config = load_channels_file(path)
    assert config == {
        "pager": {"BACKEND": "tests.channel_backends.PagerChannel", "OPTIONS": {"service_key": "s3cret"}, "MISSING_ENV": []},
        "other": {
            "BACKEND": "channels.backends.fake.FakeChannel",
            "OPTIONS": {"endpoint": "https://eu.example.com/v1", "nested": {"list": ["eu", 3], "flag": True}},
            "MISSING_ENV": [],
        },
    }


def test_channels_file_records_missing_variables(channels_file, monkeypatch):
    monkeypatch.delenv("TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("TEST_SET_KEY", "present")
    path = channels_file(
        """
        [channels.pager]
        backend = "tests.channel_backends.PagerChannel"
        options = { service_key = "${TEST_UNSET_KEY}", other = "${TEST_SET_KEY}" }
        """
    )
    config = load_channels_file(path)
    assert config["pager"]["MISSING_ENV"] == ["TEST_UNSET_KEY"]
    assert config["pager"]["OPTIONS"]["other"] == "present"


def test_channels_file_without_options(channels_file):
    config = load_channels_file(channels_file('[channels.f]\nbackend = "channels.backends.fake.FakeChannel"\n'))
    assert config == {"f": {"BACKEND": "channels.backends.fake.FakeChannel", "OPTIONS": {}, "MISSING_ENV": []}}


def test_the_shipped_channels_file_is_the_default_setting():
    assert load_channels_file(settings.BASE_DIR / "channels.toml") == settings.NOTIFICATION_CHANNELS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[channels.x\nbackend = 1", "not valid TOML"),
        ('[channels.x]\noptions = { a = 1 }\n', "needs a backend"),
        ('[channels.x]\nbackend = 42\n', "needs a backend"),
        ('[channels.x]\nbackend = "channels.backends.fake.FakeChannel"\nlatency_ms = 5\n', "unknown keys ['latency_ms']"),
        ('[other]\nname = "x"\n', "defines no [channels.NAME]"),
        ("", "defines no [channels.NAME]"),
    ],
)
def test_channels_file_errors(channels_file, text, expected):
    with pytest.raises(ChannelConfigurationError) as caught:
        load_channels_file(channels_file(text))
    assert expected in str(caught.value)


def test_channels_file_that_does_not_exist(tmp_path):
    with pytest.raises(ChannelConfigurationError, match="does not exist"):
        load_channels_file(tmp_path / "absent.toml")


# --- the registry -----------------------------------------------------------------------------

PAGER = {"BACKEND": "tests.channel_backends.PagerChannel", "OPTIONS": {"service_key": "s3cret"}, "MISSING_ENV": []}


def test_build_channels_instantiates_each_backend_with_its_options():
    channels = registry.build_channels({"pager": PAGER, "f": {"BACKEND": "channels.backends.fake.FakeChannel", "OPTIONS": {"latency_ms": 5}}})
    assert set(channels) == {"pager", "f"}
    assert channels["pager"].name == "pager"
    assert channels["pager"].service_key == "s3cret"
    assert channels["f"].latency == 0.005


def test_build_channels_names_the_channel_and_the_missing_variable():
    with pytest.raises(ChannelConfigurationError) as caught:
        registry.build_channels({"pager": {**PAGER, "MISSING_ENV": ["PAGER_KEY", "PAGER_URL"]}})
    assert "'pager'" in str(caught.value)
    assert "PAGER_KEY" in str(caught.value) and "PAGER_URL" in str(caught.value)


@pytest.mark.parametrize(
    "backend, expected",
    [
        ("tests.channel_backends.DoesNotExist", "cannot import backend"),
        ("no_such_package.module.Channel", "cannot import backend"),
        ("notdotted", "cannot import backend"),
        ("tests.channel_backends.NotAChannel", "is not a Channel subclass"),
    ],
)
def test_build_channels_refuses_a_bad_backend(backend, expected):
    with pytest.raises(ChannelConfigurationError) as caught:
        registry.build_channels({"pager": {"BACKEND": backend, "OPTIONS": {}}})
    assert "'pager'" in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "backend, options",
    [
        ("tests.channel_backends.PagerChannel", {}),  # a required option missing
        ("tests.channel_backends.PagerChannel", {"service_key": "k", "colour": "red"}),  # an unknown one
        ("channels.backends.log.LogChannel", {"kind": "fax"}),
    ],
)
def test_build_channels_refuses_bad_options(backend, options):
    with pytest.raises(ChannelConfigurationError, match="'pager'"):
        registry.build_channels({"pager": {"BACKEND": backend, "OPTIONS": options}})


def test_all_channels_is_rebuilt_when_the_setting_changes():
    before = registry.all_channels()
    assert "pager" not in before
    assert registry.all_channels() is before  # built once
    with override_settings(NOTIFICATION_CHANNELS={**settings.NOTIFICATION_CHANNELS, "pager": PAGER}):
        assert registry.get_channel("pager").kind == "pager"
    assert registry.get_channel("pager") is None


# --- the system check -------------------------------------------------------------------------


def test_check_passes_on_the_shipped_configuration():
    assert check_channels() == []


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({**PAGER, "MISSING_ENV": ["PAGER_KEY"]}, "PAGER_KEY"),
        ({"BACKEND": "tests.channel_backends.Missing", "OPTIONS": {}}, "cannot import backend"),
        ({"BACKEND": "channels.backends.log.LogChannel", "OPTIONS": {}}, "bad options"),
    ],
)
def test_check_reports_a_broken_channel(entry, expected):
    with override_settings(NOTIFICATION_CHANNELS={**settings.NOTIFICATION_CHANNELS, "pager": entry}):
        errors = check_channels()
    assert len(errors) == 1
    assert errors[0].id == "channels.E001"
    assert errors[0].is_serious()
    assert "'pager'" in errors[0].msg
    assert expected in errors[0].msg


# --- a new channel: one class plus one settings entry ---------------------------------------


@pytest.fixture
def with_pager():
    with override_settings(NOTIFICATION_CHANNELS={**settings.NOTIFICATION_CHANNELS, "pager": PAGER}):
        yield


def test_a_new_channel_is_one_class_plus_one_settings_entry(db, with_pager):
    client = make_api_client()
    response = client.post("/api/v1/notifications", {"channel": "pager", "to": "Team-Ops", "message": "disk full"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["channel"] == "pager"
    assert response.json()["to"] == "team-ops"  # the new channel's own normalisation
    assert Notification.objects.get().channel == "pager"
    assert OutboxEntry.objects.get().channel == "pager"

    listed = client.get("/api/v1/channels")
    channels = {c["name"]: c for c in listed.json()["channels"]}
    assert channels["pager"] == {"name": "pager", "kind": "pager", "backend": "tests.channel_backends.PagerChannel",
                                 "send_timeout": 10.0}
    assert {"email-log", "sms-log", "slack-log", "fake"} <= set(channels)
    assert b"s3cret" not in listed.content  # options (secrets) are never shown


def test_a_new_channel_validates_its_recipients(db, with_pager):
    response = make_api_client().post("/api/v1/notifications", {"channel": "pager", "to": "ops", "message": "x"}, format="json")
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"to"}
    assert Notification.objects.count() == 0


def test_without_the_settings_entry_the_channel_is_unknown(db):
    response = make_api_client().post("/api/v1/notifications", {"channel": "pager", "to": "team-ops", "message": "x"}, format="json")
    assert response.status_code == 400
    assert "channel" in response.json()["error"]["fields"]


# --- the fake backend -------------------------------------------------------------------------


def test_fake_fails_the_first_attempts_transiently_then_succeeds():
    channel = FakeChannel("fake", fail_first_attempts=2, retry_after=7)
    for attempt in (1, 2):
        with pytest.raises(TransientChannelError) as caught:
            channel.deliver(msg(attempt=attempt))
        assert caught.value.retry_after == 7
    provider_ids = {channel.deliver(msg(attempt=attempt)) for attempt in (3, 4)}
    assert len(provider_ids) == 2
    assert all(isinstance(i, str) and i.startswith("fake-") for i in provider_ids)


def test_fake_permanent_rate_one_always_fails_permanently():
    channel = FakeChannel("fake", permanent_rate=1)
    for attempt in range(1, 20):
        with pytest.raises(PermanentChannelError):
            channel.deliver(msg(attempt=attempt))


def test_fake_transient_rate_one_always_fails_transiently():
    channel = FakeChannel("fake", transient_rate=1)
    for attempt in range(1, 20):
        with pytest.raises(TransientChannelError) as caught:
            channel.deliver(msg(attempt=attempt))
        assert not isinstance(caught.value, PermanentChannelError)


def test_fake_by_default_always_succeeds_and_accepts_any_recipient():
    channel = FakeChannel("fake")
    message = msg("anything at all")
    assert channel.validate(message) is message
    assert channel.deliver(message).startswith("fake-")
    assert channel.describe() == {"name": "fake", "kind": "fake", "backend": "channels.backends.fake.FakeChannel",
                                  "latency_ms": 0, "send_timeout": 1.0}
