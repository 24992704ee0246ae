"""Stand-ins for the email channel's peers, on loopback in the test process.

- SMTP: an aiosmtpd server whose MailSink refuses some recipients (550 at RCPT for local parts
  "refuse...", 451 for "later...", 554 at DATA for "baddata..."), as a real MTA does, and keeps
  the rest.
- ESP: a stand-in for Brevo's POST /v3/smtp/email (201 {"messageId"}, 400/401 {"code",
  "message"}, 429 with Retry-After or x-sib-ratelimit-reset, 500, a slow answer, a dropped
  connection), for Anymail's Brevo backend pointed at it through `api_url`. Like Brevo, it
  can then report on a message it accepted: the transactional webhook events scripted for its
  recipient ("delivered", "hard_bounce", "spam", "opened", ...) are POSTed, as Brevo's JSON and
  with HTTP basic auth, to the tracking URL it is given.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import http.client
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

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


@dataclass
class WebhookPost:
    """One transactional webhook event the stand-in POSTed, and what the tracking URL answered."""

    payload: dict | bytes  # Brevo's event JSON (bytes: a body the test chose, e.g. not JSON)
    status: int  # the HTTP status it was answered with (0: the connection failed)
    body: bytes = b""

    @property
    def email(self) -> str | None:
        return self.payload.get("email") if isinstance(self.payload, dict) else None

    @property
    def event(self) -> str | None:
        return self.payload.get("event") if isinstance(self.payload, dict) else None


# What Brevo says in "reason" when a scripted event gives none.
DEFAULT_REASONS = {
    "hard_bounce": "550 5.1.1 The email account that you tried to reach does not exist",
    "soft_bounce": "452 4.2.2 The email account that you tried to reach is over quota",
    "deferred": "421 4.7.0 Try again later, closing connection",
    "blocked": "blocked : due to hard bounce",
}
_WEBHOOK_ID = 424242  # Brevo's "id": the id of the webhook (the same in every event it posts)
CONFIGURED = object()  # post_event's default auth: the one given to post_events_to


def brevo_event(event: str, *, email: str, message_id: str, subject: str = "", at: float | None = None,
                **fields) -> dict:
    """A transactional webhook event as Brevo posts it (developers.brevo.com/docs/transactional-webhooks):
    `event` ("delivered", "hard_bounce", "soft_bounce", "spam", "unsubscribe", "opened", "click",
    "deferred", ...), its recipient and message id, Brevo's timestamps (`at`, epoch seconds;
    default now) and `fields` ("reason", "link", "tag", ...; a value None leaves the field out)."""
    at = time.time() if at is None else at
    payload = {
        "event": event, "email": email, "id": _WEBHOOK_ID,
        "date": datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "ts": int(at), "ts_event": int(at), "ts_epoch": int(at * 1000),
        "message-id": message_id, "subject": subject, "sending_ip": "185.41.28.109", "tags": [],
    }
    if event in DEFAULT_REASONS:
        payload["reason"] = DEFAULT_REASONS[event]
    if event == "click":
        payload["link"] = "https://example.com/clicked"
    payload.update(fields)
    return {key: value for key, value in payload.items() if value is not None}


class BrevoStandIn(HTTPStandIn):
    """Answers as POST /v3/smtp/email does; what it answers depends on the recipient's local part.

    Webhooks: `post_events_to(url, auth)` gives it a tracking URL; `script_events(to, ...)`
    scripts the events it reports after it next accepts a message to `to` (in order, from a
    thread of their own, `event_delay` seconds after its answer: as Brevo, they may reach the
    service before the dispatcher has recorded the send). `post_event` posts one event (or any
    body) at once. Every post is in `posted`, with the status it was answered."""

    protocol_version = "HTTP/1.1"
    json_content_type = text_content_type = "application/json; charset=utf-8"

    def __init__(self, event_delay: float = 0.05):
        self.seen: dict[str, int] = {}
        self.message_ids: dict[str, list[str]] = {}  # the messageIds it answered, per recipient
        self.posted: list[WebhookPost] = []
        self.event_delay = event_delay
        self.tracking_url: str | None = None
        self.tracking_auth: tuple[str, str] | None = None
        self._scripted_events: dict[str, list[dict]] = {}
        self._posters: list[threading.Thread] = []
        self._webhook_ids = itertools.count(1)
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

    def complete(self, request: Request, reply: Reply) -> Reply:
        """A message accepted (201 with a messageId): note its id, and report the events
        scripted for its recipient."""
        if reply.status == 201 and isinstance(reply.body, dict) and "messageId" in reply.body:
            sent = request.json()
            to, message_id = sent["to"][0]["email"], reply.body["messageId"]
            with self._lock:
                self.message_ids.setdefault(to, []).append(message_id)
                events = self._scripted_events.pop(to, [])
            if events:
                payloads = [brevo_event(fields.pop("event"), email=to, message_id=message_id,
                                        subject=sent.get("subject", ""), **fields) for fields in events]
                poster = threading.Thread(target=self._post_later, args=(payloads,), daemon=True)
                self._posters.append(poster)
                poster.start()
        return reply

    # --- webhooks ------------------------------------------------------------------------------

    def post_events_to(self, url: str, auth: tuple[str, str] | None) -> None:
        """Report events to the tracking `url` (http://), with HTTP basic auth (user, password)."""
        self.tracking_url, self.tracking_auth = url, auth

    def script_events(self, to: str, *events: str | dict) -> None:
        """Events to report after the next message to `to` is accepted: each an event name or
        {"event": name, **fields} (e.g. "reason", or a field's value None to leave it out)."""
        with self._lock:
            self._scripted_events.setdefault(to, []).extend(
                {"event": event} if isinstance(event, str) else dict(event) for event in events)

    def post_event(self, payload: dict | bytes, *, auth=CONFIGURED, url: str | None = None) -> WebhookPost:
        """POST one event (Brevo's JSON, or raw bytes) to the tracking URL now, with the
        configured basic auth, or `auth` ((user, password), or None for none)."""
        url = url or self.tracking_url
        if url is None:
            raise RuntimeError("no tracking URL: call post_events_to first")
        auth = self.tracking_auth if auth is CONFIGURED else auth
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "Brevo webhook stand-in",
                   "X-Request-Id": f"webhook-{next(self._webhook_ids)}"}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=10)
        try:
            conn.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
            response = conn.getresponse()
            post = WebhookPost(payload, response.status, response.read())
        except OSError:
            post = WebhookPost(payload, 0)
        finally:
            conn.close()
        with self._lock:
            self.posted.append(post)
        return post

    def posts_for(self, to: str) -> list[WebhookPost]:
        """The events posted about messages to `to`, in order."""
        with self._lock:
            return [post for post in self.posted if post.email == to]

    def _post_later(self, payloads: list[dict]) -> None:
        if self.release.wait(self.event_delay):
            return  # the stand-in is stopping
        for payload in payloads:
            self.post_event(payload)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for poster in self._posters:
            poster.join(timeout=5)
