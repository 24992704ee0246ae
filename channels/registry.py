"""The configured channels, built once per process from the NOTIFICATION_CHANNELS setting.

Adding a channel is one backend class plus one entry in the channels file; the API and the
dispatchers look channels up here by name and need no change.
"""

from __future__ import annotations

import threading

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .base import Channel
from .errors import ChannelConfigurationError
from .policy import check_fallbacks, parse_policy

_lock = threading.Lock()
_channels: dict[str, Channel] | None = None

# The channel that delivers the API clients' status events to their webhook endpoints. Always
# configured; the channels file may define it to set its options or policy.
STATUS_WEBHOOKS_CHANNEL = "status-webhooks"


def _built_in() -> dict[str, dict]:
    return {STATUS_WEBHOOKS_CHANNEL: {
        "BACKEND": "channels.backends.webhook.StatusWebhookChannel",
        "OPTIONS": {"allow_private_targets": bool(getattr(settings, "NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS", False))},
    }}


def all_channels() -> dict[str, Channel]:
    """Every configured channel by name. Raises ChannelConfigurationError if one is broken."""
    global _channels
    if _channels is None:
        with _lock:
            if _channels is None:
                channels = build_channels({**_built_in(), **settings.NOTIFICATION_CHANNELS})
                check_policies(channels)
                _channels = channels
    return _channels


def get_channel(name: str) -> Channel | None:
    """The channel called `name`, or None if there is none."""
    return all_channels().get(name)


def build_channels(config: dict[str, dict]) -> dict[str, Channel]:
    """Instantiate each backend with its options; report every problem by channel name."""
    channels: dict[str, Channel] = {}
    for name, entry in config.items():
        missing = entry.get("MISSING_ENV") or []
        if missing:
            raise ChannelConfigurationError(
                f"channel {name!r}: environment variable(s) {', '.join(sorted(set(missing)))} not set"
            )
        try:
            backend = import_string(entry["BACKEND"])
        except ImportError as exc:
            raise ChannelConfigurationError(f"channel {name!r}: cannot import backend {entry['BACKEND']!r}: {exc}") from exc
        if not (isinstance(backend, type) and issubclass(backend, Channel)):
            raise ChannelConfigurationError(f"channel {name!r}: {entry['BACKEND']!r} is not a Channel subclass")
        policy = parse_policy(name, entry)
        try:
            channel = backend(name, **entry.get("OPTIONS", {}))
        except TypeError as exc:  # an unknown or missing option
            raise ChannelConfigurationError(f"channel {name!r}: bad options: {exc}") from exc
        channel.policy = policy
        channels[name] = channel
    return channels


def check_policies(channels: dict[str, Channel]) -> None:
    """The checks across channels: fallbacks that exist, of the same kind, without a cycle."""
    check_fallbacks({name: c.kind for name, c in channels.items()}, {name: c.policy for name, c in channels.items()})


def _reset(*, setting: str, **kwargs) -> None:
    global _channels
    if setting in ("NOTIFICATION_CHANNELS", "NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS"):
        _channels = None


setting_changed.connect(_reset)
