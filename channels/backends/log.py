"""Log channels: write the recipient and message to the log instead of sending.

As the previous system's email-log, sms-log and slack-log channels did, for local runs and
demos. They still validate recipients as the real channel of their kind would.
"""

from __future__ import annotations

import logging
import uuid

from ..base import Channel, Message
from ..errors import ChannelConfigurationError
from ..validation import LIMITS, VALIDATORS

logger = logging.getLogger("channels.log")


class LogChannel(Channel):
    """Options: `kind` = "email", "sms" or "slack" (which recipients it accepts)."""

    sends_in_process = True

    def __init__(self, name: str, *, kind: str):
        super().__init__(name, timeout=1.0, kind=kind)
        if kind not in VALIDATORS:
            raise ChannelConfigurationError(f"channel {name!r}: kind must be one of {sorted(VALIDATORS)}")
        self.kind = kind
        self._validate = VALIDATORS[kind]

    def validate(self, message: Message) -> Message:
        return self._validate(message)

    def send(self, message: Message) -> str:
        logger.info(
            "%s to=%s subject=%r message=%r notification=%s",
            self.name, message.recipient, message.subject, message.body, message.notification_id,
        )
        return f"log-{uuid.uuid4()}"

    def describe(self) -> dict:
        return {**super().describe(), "limits": LIMITS.get(self.kind, {})}
