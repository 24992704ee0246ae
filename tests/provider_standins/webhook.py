"""A webhook receiver on loopback, in the test process: it verifies every request's signature
with the channel's secret, as a real receiver would, and answers with the status a test asks for."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from tests.provider_standins import HTTPStandIn, Reply

SECRET = "whsec-test-3f9a1c"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_valid: bool

    def json(self):
        return json.loads(self.body)


class Receiver(HTTPStandIn):
    """A webhook receiver on loopback. It checks X-Notify-Signature the way a receiver is told
    to (HMAC-SHA256 of "<timestamp>.<body>", constant-time comparison, a fresh timestamp) and
    answers 401 to a bad one; otherwise `respond(received)` chooses the answer."""

    protocol_version = "HTTP/1.1"
    text_content_type = "application/json"

    def __init__(self, respond: Callable[[Received], Reply] | None = None, secret: str = SECRET):
        self.respond = respond or (lambda received: Reply(200, {"id": f"rcv-{uuid.uuid4().hex[:12]}"}))
        self.secret = secret
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    @property
    def received(self) -> list[Received]:
        return self.requests

    def parse(self, path, headers, raw) -> Received:
        headers = {k.lower(): v for k, v in headers.items()}
        timestamp = headers.get("x-notify-timestamp", "")
        expected = "sha256=" + hmac.new(self.secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        valid = fresh and hmac.compare_digest(expected, headers.get("x-notify-signature", ""))
        return Received(path, headers, raw, valid)

    def answer(self, received: Received) -> Reply:
        return self.respond(received) if received.signature_valid else Reply(401, {"error": "bad signature"})
