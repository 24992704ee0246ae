"""The channel interface: validate a message at intake, send it from a dispatcher.

A channel knows nothing of the API, the database or the outbox. It receives a `Message`,
and either returns the provider's message id or raises one of `channels.errors`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar


@dataclass(frozen=True)
class Message:
    """What a channel sends: the recipient, the text, and the notification it belongs to."""

    recipient: str
    body: str
    subject: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    notification_id: str = ""
    attempt: int = 1

    def with_recipient(self, recipient: str) -> "Message":
        return replace(self, recipient=recipient)


class Channel(ABC):
    """Base class of every channel backend.

    A backend is configured in NOTIFICATION_CHANNELS under a name, with options passed to
    `__init__` as keyword arguments. Subclasses set `kind` (what it reaches: email, sms, ...),
    override `validate` to check and normalise a message at intake, and implement `send`.
    `send` runs on a dispatcher thread, concurrently with other sends of the same instance,
    so it must be thread-safe and must bound its own network waits.
    """

    kind: ClassVar[str] = "generic"
    # The longest a send may take (a backend bounds its network waits by it). A dispatcher
    # starts a send only while at least this much of its lease remains.
    send_timeout: float = 30.0

    def __init__(self, name: str, **options: Any):
        self.name = name
        self.options = options

    def validate(self, message: Message) -> Message:
        """Check a message at intake; return it, possibly normalised (e.g. a phone number in
        E.164). Raise `InvalidMessage` naming the field that this channel cannot send."""
        return message

    @abstractmethod
    def send(self, message: Message) -> str | None:
        """Send the message; return the provider's message id (or None if it gives none).
        Raise `TransientChannelError` or `PermanentChannelError` on failure."""

    def describe(self) -> dict[str, Any]:
        """What `GET /api/v1/channels` shows of this channel (never its secrets)."""
        return {"name": self.name, "kind": self.kind, "backend": f"{type(self).__module__}.{type(self).__qualname__}"}
