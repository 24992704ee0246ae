"""Channel backends that only the tests configure, by dotted path ("tests.channel_backends.X")
in a channels file or in NOTIFICATION_CHANNELS: a new kind of channel (PagerChannel), a class
that is no channel, and faulty backends for the dispatcher tests."""

from __future__ import annotations

from channels.base import Channel, Message
from channels.errors import InvalidMessage, TransientChannelError


class PagerChannel(Channel):
    """A new kind of channel, added with this class and one settings entry only.

    Options: `service_key` (a secret: never shown by describe()).
    Recipients are pager teams, "team-NAME", stored lower-case.
    """

    kind = "pager"

    def __init__(self, name: str, *, service_key: str):
        super().__init__(name, service_key=service_key)
        self.service_key = service_key

    def validate(self, message: Message) -> Message:
        if not message.recipient.lower().startswith("team-"):
            raise InvalidMessage("to", "not a pager team, e.g. team-ops")
        return message.with_recipient(message.recipient.lower())

    def send(self, message: Message) -> str:
        return f"page-{message.notification_id}"


class NotAChannel:
    """Importable, but not a Channel subclass."""


# The NOTIFICATION_CHANNELS entry that adds PagerChannel as channel "pager".
PAGER = {"BACKEND": "tests.channel_backends.PagerChannel", "OPTIONS": {"service_key": "s3cret"}, "MISSING_ENV": []}


# --- faulty backends, for dispatcher tests -------------------------------------------------------


class ExplodingChannel(Channel):
    """A buggy backend: its first attempts raise an unexpected exception (not a ChannelError)."""

    kind = "test"

    def __init__(self, name: str, *, explode_attempts: int = 1):
        super().__init__(name, timeout=1.0)
        self.explode_attempts = explode_attempts

    def send(self, message: Message) -> str:
        if message.attempt <= self.explode_attempts:
            raise KeyError("bug in channel code")
        return "exploding-ok"


class LeakyChannel(Channel):
    """A backend whose provider library puts credentials in its errors: attempt 1 raises the
    library's connection error quoting the request's Authorization header, attempt 2 a
    transient error quoting the token; then it succeeds. A message with metadata "bug" makes
    it raise an unexpected exception quoting the token (a permanent failure, logged with its
    traceback). The logs must show the token nowhere (test_logging)."""

    kind = "test"

    def __init__(self, name: str, *, api_token: str):
        super().__init__(name, timeout=1.0)
        self.api_token = api_token

    def send(self, message: Message) -> str:
        if message.metadata.get("bug"):
            raise RuntimeError(f"cannot parse the answer to a request with api_token={self.api_token}")
        if message.attempt == 1:
            raise ConnectionError(f"HTTP 500 for POST with headers {{'Authorization': 'Bearer {self.api_token}'}}")
        if message.attempt == 2:
            raise TransientChannelError(f"provider rejected token={self.api_token}: try again")
        return "leaky-ok"
