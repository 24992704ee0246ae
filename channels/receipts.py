"""Delivery receipts: what a provider says about a message after it accepted it.

A channel that takes receipts turns its provider's callback into `Receipt`s (verifying it
first, and raising `ForgedReceipt` when it cannot be trusted); the intake records them
(notifications.receipts). Everything in a receipt is the provider's word, made safe text here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from .provider_text import ERROR_MAX, ID_MAX, clean

# What a receipt means for its notification.
DELIVERED = "delivered"  # it reached the recipient
UNDELIVERED = "undelivered"  # accepted, then not delivered: a bounce, a carrier's refusal
INFO = "info"  # history only: queued, deferred, opened, clicked, a complaint...
OUTCOMES = (DELIVERED, UNDELIVERED, INFO)


class ForgedReceipt(Exception):
    """A callback that does not prove it comes from the provider (no signature, a wrong one)."""


class MalformedReceipt(ValueError):
    """A callback the provider's protocol does not allow (a missing field, a body that is not
    what the provider sends)."""


@dataclass(frozen=True)
class Receipt:
    """One provider report about one message, cleaned."""

    source: str  # who said it: "twilio:<channel>", "anymail:<ESP>"
    kind: str  # the kind of channel it is about (email, sms): suppressions are per kind
    provider_message_id: str
    outcome: str  # DELIVERED, UNDELIVERED or INFO
    provider_status: str  # the provider's own word: "undelivered", "hard_bounce", "opened"
    error_code: str = ""
    detail: str = ""
    suppress_reason: str = ""  # non-empty: the recipient joins the suppression list
    occurred_at: datetime | None = None
    # What makes two callbacks the same report (the provider's event id where it gives one):
    # the second is ignored.
    identity: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown receipt outcome {self.outcome!r}")
        for name, limit in (("provider_message_id", ID_MAX), ("provider_status", 100), ("error_code", 100),
                            ("detail", ERROR_MAX), ("suppress_reason", ERROR_MAX)):
            object.__setattr__(self, name, clean(getattr(self, name), limit=limit, mark_cut=name in ("detail", "suppress_reason")))

    @property
    def dedupe_key(self) -> str:
        """A fixed-length key for the receipt's identity (a unique index in the database)."""
        identity = self.identity or "\x1f".join(
            (self.provider_message_id, self.outcome, self.provider_status, self.error_code,
             self.occurred_at.isoformat() if self.occurred_at else ""))
        return hashlib.sha256(f"{self.source}\x1e{identity}".encode("utf-8", "surrogatepass")).hexdigest()
