"""Channel backends used only by the tests (tests/test_channels.py)."""

from __future__ import annotations

from channels.base import Channel, Message
from channels.errors import InvalidMessage


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
