"""Stand-ins for the email channel's peers, on loopback in the test process.

- SMTP: an aiosmtpd server whose MailSink refuses some recipients (550 at RCPT for local parts
  "refuse...", 451 for "later...", 554 at DATA for "baddata..."), as a real MTA does, and keeps
  the rest.
- ESP: a stand-in for Brevo's POST /v3/smtp/email (201 {"messageId"}, 400/401 {"code",
  "message"}, 429 with Retry-After or x-sib-ratelimit-reset, 500, a slow answer, a dropped
  connection), for Anymail's Brevo backend pointed at it through `api_url`.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import uuid
from dataclasses import dataclass

from aiosmtpd.controller import Controller

from tests.helpers import free_port
from tests.provider_standins import HTTPStandIn, Reply

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
BREVO_BACKEND = "anymail.backends.brevo.EmailBackend"
BREVO_KEY = "xkeysib-test-key"


# --- SMTP (aiosmtpd) ----------------------------------------------------------------------------


class MailSink:
    """aiosmtpd handler: refuses local parts starting "refuse" (550) or "later" (451) at RCPT,
    and "baddata" (554) at DATA; keeps everything else."""

    def __init__(self):
        self.received: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("refuse"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        if local.startswith("later"):
            return f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        if any(r.startswith("baddata") for r in envelope.rcpt_tos):
            return "554 5.7.1 Message rejected as spam"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 Ok: queued"

    def by_recipient(self, address: str):
        return [entry for entry in self.received if address in entry[1]]


@contextlib.contextmanager
def smtp_sink():
    """An SMTP server on a free loopback port: (its controller, its MailSink)."""
    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, sink
    finally:
        controller.stop()


# --- Brevo's transactional email API --------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class BrevoStandIn(HTTPStandIn):
    """Answers as POST /v3/smtp/email does; what it answers depends on the recipient's local part."""

    protocol_version = "HTTP/1.1"
    json_content_type = text_content_type = "application/json; charset=utf-8"

    def __init__(self):
        self.seen: dict[str, int] = {}
        super().__init__()

    def parse(self, path, headers, raw) -> Request:
        return Request("POST", path, {k.lower(): v for k, v in headers.items()}, raw)

    def answer(self, request: Request) -> Reply:
        if request.path != "/v3/smtp/email":
            return Reply(404, {"code": "not_found", "message": "Invalid route"})
        if request.headers.get("api-key") != BREVO_KEY:
            return Reply(401, {"code": "unauthorized", "message": "Key not found"})
        to = request.json()["to"][0]["email"]
        local = to.split("@")[0]
        self.seen[to] = self.seen.get(to, 0) + 1
        accepted = Reply(201, {"messageId": f"<{uuid.uuid4().hex}@smtp-relay.mailin.fr>"})
        if local.startswith("invalid"):
            return Reply(400, {"code": "invalid_parameter", "message": "email is not valid in to"})
        if local.startswith("ratelimited"):
            return Reply(429, {"code": "too_many_requests", "message": "The expected rate limit is exceeded."},
                         {"Retry-After": "7", "x-sib-ratelimit-limit": "1000", "x-sib-ratelimit-remaining": "0", "x-sib-ratelimit-reset": "7"})
        if local.startswith("sibreset"):
            return Reply(429, {"code": "too_many_requests", "message": "The expected rate limit is exceeded."},
                         {"x-sib-ratelimit-remaining": "0", "x-sib-ratelimit-reset": "3"})
        if local.startswith("flaky") and self.seen[to] == 1:
            return Reply(429, {"code": "too_many_requests", "message": "The expected rate limit is exceeded."}, {"Retry-After": "1"})
        if local.startswith("down"):
            return Reply(500, {"code": "internal_error", "message": "Internal server error"})
        if local.startswith("slow"):
            return Reply(201, {"messageId": "<late@smtp-relay.mailin.fr>"}, delay=1.0)
        if local.startswith("drop"):
            return Reply(0, drop=True)
        if local.startswith("garbled"):
            return Reply(201, b"<html>gateway says ok</html>")
        return accepted
