"""Channels configuration: the channels file (channels/config.py), the registry built from it
(channels/registry.py) and the system check (channels/apps.py). No network, no database."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from channels import registry
from channels.apps import check_channels
from channels.config import load_channels_file
from channels.errors import ChannelConfigurationError
from tests.channel_backends import PAGER

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
