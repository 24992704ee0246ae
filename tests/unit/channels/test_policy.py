"""A channel's policy (channels/policy.py): rate budgets, circuit breaker and fallbacks, from
the channels file to the registry, the system check and GET /api/v1/channels' description.
No network, no database."""

from __future__ import annotations

import re

import pytest
from django.test import override_settings

from channels.apps import check_channels
from channels.config import load_channels_file
from channels.errors import ChannelConfigurationError
from channels.policy import CircuitBreaker, Rate, parse_policy
from channels.registry import build_channels, check_policies

SMS = 'backend = "channels.backends.log.LogChannel"\noptions = { kind = "sms" }\n'
EMAIL = 'backend = "channels.backends.log.LogChannel"\noptions = { kind = "email" }\n'


@pytest.mark.parametrize("text, per_second, burst", [
    ("20/s", 20, 10), ("1/s", 1, 1), ("600/m", 10, 5), ("30/min", 0.5, 1), ("360/h", 0.1, 1), ("0.5/s", 0.5, 1),
])
def test_a_rate_is_a_bucket_refilled_per_second_holding_half_a_seconds_worth(text, per_second, burst):
    rate = Rate.parse(text)
    assert (rate.per_second, rate.burst, rate.text) == (pytest.approx(per_second), burst, text)


@pytest.mark.parametrize("text", ["20", "20/d", "-1/s", "0/s", "fast", "20/s/s", 20, None])
def test_a_malformed_rate_is_refused(text):
    with pytest.raises(ValueError):
        Rate.parse(text)


def test_the_channels_file_carries_the_policy_keys_and_the_registry_parses_them(channels_file):
    path = channels_file(
        f'[channels.sms]\n{SMS}rate_limit = "20/s"\nrecipient_rate_limit = "1/s"\n'
        'circuit_breaker = { failures = 5, cool_down = 30 }\nfallback = ["sms-backup"]\n'
        f'[channels.sms-backup]\n{SMS}'
    )
    channels = build_channels(load_channels_file(path))
    check_policies(channels)
    policy = channels["sms"].policy
    assert policy.rate_limit == Rate(20, 10, "20/s") and policy.recipient_rate_limit == Rate(1, 1, "1/s")
    assert policy.circuit_breaker == CircuitBreaker(failures=5, cool_down=30.0)
    assert policy.fallback == ("sms-backup",)
    described = channels["sms"].describe()  # as GET /api/v1/channels shows it
    assert {key: described[key] for key in ("rate_limit", "recipient_rate_limit", "circuit_breaker", "fallback")} == {
        "rate_limit": "20/s", "recipient_rate_limit": "1/s",
        "circuit_breaker": {"failures": 5, "cool_down": 30.0}, "fallback": ["sms-backup"]}
    assert channels["sms-backup"].policy == parse_policy("sms-backup", {})


@pytest.mark.parametrize("keys, complaint", [
    ('rate_limit = "fast"', "not a rate"),
    ('recipient_rate_limit = "0/s"', "above 0"),
    ("circuit_breaker = { failures = 0 }", "failures must be a whole number"),
    ('circuit_breaker = { failures = 3, cool_down = "soon" }', "cool_down must be a number"),
    ("circuit_breaker = { tries = 3 }", "circuit_breaker must be a table"),
    ("fallback = [1]", "fallback must be a list of channel names"),
    ('fallback = ["b", "b"]', "names a channel twice"),
])
def test_a_bad_policy_value_is_refused_naming_the_channel(channels_file, keys, complaint):
    path = channels_file(f"[channels.a]\n{SMS}{keys}\n[channels.b]\n{SMS}")
    with pytest.raises(ChannelConfigurationError, match=f"channel 'a': .*{complaint}"):
        build_channels(load_channels_file(path))


@pytest.mark.parametrize("files, complaint", [
    (f'[channels.a]\n{SMS}fallback = ["nowhere"]\n', "channel 'a': fallback 'nowhere' is not a configured channel"),
    (f'[channels.a]\n{SMS}fallback = ["a"]\n', "channel 'a': falls back to itself"),
    (f'[channels.a]\n{SMS}fallback = ["b"]\n[channels.b]\n{EMAIL}', "fallback 'b' is of kind 'email', not 'sms'"),
    (f'[channels.a]\n{SMS}fallback = ["b"]\n[channels.b]\n{SMS}fallback = ["c"]\n[channels.c]\n{SMS}fallback = ["a"]\n',
     "its fallbacks form a cycle \\(a -> b -> c -> a\\)"),
])
def test_fallbacks_must_exist_share_the_kind_and_not_cycle(channels_file, files, complaint):
    config = load_channels_file(channels_file(files))
    with pytest.raises(ChannelConfigurationError, match=complaint):
        check_policies(build_channels(config))
    with override_settings(NOTIFICATION_CHANNELS=config):  # manage.py check says it too
        errors = check_channels()
    assert [e.id for e in errors] == ["channels.E002"] and re.search(complaint, errors[0].msg)

