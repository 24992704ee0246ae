"""The errors a channel raises. The dispatcher decides what to do from the type alone.

- `TransientChannelError`: try again later (timeouts, connection errors, 5xx, rate limits).
- `PermanentChannelError`: never retry (invalid recipient, revoked token, rejected content).
  - `RecipientRefusedError`: the recipient opted out or is gone for good; later notifications
    to it are suppressed (the client's suppression list).
- `InvalidMessage`: raised at intake by `Channel.validate`; the API answers 400 naming the field.
- `ChannelConfigurationError`: a bad channel configuration. It subclasses Django's
  ImproperlyConfigured, outside the send errors, so that no send loop swallows it.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class ChannelError(Exception):
    """A send failed. Carries the channel's name and, where known, the provider's status."""

    def __init__(self, message: str, *, channel: str | None = None, status: int | str | None = None):
        super().__init__(message)
        self.channel = channel
        self.status = status

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (provider status {self.status})" if self.status is not None else text


class TransientChannelError(ChannelError):
    """The send may succeed if tried again later.

    `retry_after` (seconds) is the provider's own word on when to come back (Retry-After);
    the next attempt is then not earlier than that.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class PermanentChannelError(ChannelError):
    """The send will never succeed as it stands: do not retry."""


class RecipientRefusedError(PermanentChannelError):
    """The recipient will never take a message on this channel: it opted out (an SMS STOP),
    or no longer exists (an archived Slack channel). The notification fails, and the recipient
    joins the client's suppression list, so that later notifications to it are not sent."""


class InvalidMessage(ValueError):
    """A notification this channel cannot send, found at intake. `field` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class ChannelConfigurationError(ImproperlyConfigured):
    """A channel is misconfigured (unknown backend, missing credential, bad option)."""
