"""The fake backend (channels/backends/fake.py): scripted failures, then success."""

from __future__ import annotations

import pytest

from channels.backends.fake import FakeChannel
from channels.base import Message
from channels.errors import PermanentChannelError, TransientChannelError

# What a channel without rate budgets, circuit breaker or fallbacks shows of them.
NO_POLICY = {"rate_limit": None, "recipient_rate_limit": None, "circuit_breaker": None, "fallback": []}


def msg(recipient="x", body="hi", subject="", attempt=1) -> Message:
    return Message(recipient=recipient, body=body, subject=subject, attempt=attempt)


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
                                  "latency_ms": 0, "send_timeout": 1.0, **NO_POLICY}
