"""Email through Django's email framework: plain SMTP or any email service provider (ESP)
that django-anymail supports (Brevo, Mailgun, Amazon SES, Postmark, SendGrid, Resend, ...).

    [channels.email-local]
    backend = "channels.backends.email.EmailChannel"
    [channels.email-local.options]
    backend = "django.core.mail.backends.smtp.EmailBackend"
    from_email = "Notifications <notify@example.com>"
    connection = { host = "localhost", port = 25 }

    [channels.email]
    backend = "channels.backends.email.EmailChannel"
    [channels.email.options]
    backend = "anymail.backends.brevo.EmailBackend"
    from_email = "notify@example.com"
    connection = { api_key = "${BREVO_API_KEY}" }     # api_url defaults to Brevo's own

Options:
- `backend`: a Django email backend (dotted path); default Django's SMTP backend.
- `connection`: keyword arguments for that backend, so that each channel has its own
  connection settings and none come from Django's EMAIL_* / ANYMAIL settings. SMTP: host, port,
  username, password, use_tls, use_ssl, timeout, ssl_keyfile, ssl_certfile. Anymail: api_key,
  api_url (the provider's base URL: a regional endpoint or a local stand-in), and the ESP's
  other settings by their lower-case names.
- `from_email` (required): the sender, "addr@example.com" or "Name <addr@example.com>".
- `allow_from_override` (default false): a notification's metadata may then carry "from_email".
- `timeout` (seconds, default 10): the send's deadline, everything included (the channel's
  `send_timeout`). The backend's own `connection.timeout` (default: the same) bounds each of
  its network waits; a larger one raises the deadline to it.

Each send opens its own connection (a new backend instance) and closes it, so concurrent
sends on dispatcher threads share nothing. The result is the provider's message id: the ESP's
(Anymail's `message.anymail_status.message_id`), or for SMTP and other backends the
Message-ID header generated here. An ESP's 2xx answer that Anymail cannot parse still means
the ESP took the message: it counts as sent, without an id (Channel.deliver decides that).

Receipts: an ESP channel takes the ESP's tracking webhooks through Anymail's tracking views,
at `/receipts/anymail/<esp>/tracking/` (`receipts_route`), and `receipt_from_anymail` reads
Anymail's normalised events: delivered -> delivered; bounced, rejected and failed ->
undelivered; a hard bounce, a complaint and an unsubscribe also suppress the recipient;
everything else (queued, deferred, opened, clicked, a soft bounce) is history only.
"""

from __future__ import annotations

import inspect
import logging
import smtplib
import socket
from email.utils import make_msgid, parseaddr
from typing import Any

import requests
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.utils.module_loading import import_string
from email_validator import EmailNotValidError, validate_email

from .. import receipts
from ..base import Channel, Message
from ..errors import (
    ChannelConfigurationError,
    ChannelError,
    InvalidMessage,
    PermanentChannelError,
    TransientChannelError,
)
from ..retry_after import parse_retry_after
from ..validation import LIMITS, validate_email_message

try:  # Anymail is needed only for ESP backends; plain SMTP works without it.
    from anymail.backends.base import AnymailBaseBackend
    from anymail.exceptions import AnymailError, AnymailRecipientsRefused
except ImportError:  # pragma: no cover - exercised only where django-anymail is absent
    AnymailBaseBackend = AnymailError = AnymailRecipientsRefused = None

logger = logging.getLogger("channels.email")

DEFAULT_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
_SMTP_OPTIONS = frozenset(inspect.signature(SMTPBackend.__init__).parameters) - {"self", "kwargs", "fail_silently"}


class EmailChannel(Channel):
    kind = "email"
    accepted_on_http_2xx = True  # an ESP's API accepted it; SMTP has no HTTP status

    def __init__(
        self,
        name: str,
        *,
        from_email: str,
        backend: str = DEFAULT_BACKEND,
        connection: dict[str, Any] | None = None,
        allow_from_override: bool = False,
        timeout: float = 10.0,
    ):
        super().__init__(name, timeout=timeout)
        connection = dict(connection or {})
        connection.setdefault("timeout", self.send_timeout)
        if not _positive_number(connection["timeout"]):
            raise ChannelConfigurationError(f"channel {name!r}: connection.timeout must be a positive number of seconds")
        # A backend that may wait longer than `timeout` for one reply raises the deadline to it.
        self.send_timeout = max(self.send_timeout, float(connection["timeout"]))
        self.backend_path = backend
        self.backend_class = _import_backend(name, backend)
        self.is_esp = AnymailBaseBackend is not None and issubclass(self.backend_class, AnymailBaseBackend)
        esp_name = getattr(self.backend_class, "esp_name", None)
        self.esp_name = esp_name if isinstance(esp_name, str) else "the ESP"

        if "fail_silently" in connection:
            raise ChannelConfigurationError(f"channel {name!r}: connection.fail_silently is not allowed (failures must be seen)")
        if issubclass(self.backend_class, SMTPBackend):
            unknown = set(connection) - _SMTP_OPTIONS
            if unknown:
                raise ChannelConfigurationError(
                    f"channel {name!r}: unknown SMTP connection option(s) {sorted(unknown)}; "
                    f"known: {sorted(_SMTP_OPTIONS)}"
                )
        if self.is_esp and "api_key" in connection and not connection["api_key"]:
            raise ChannelConfigurationError(f"channel {name!r}: connection.api_key is empty")
        self.connection_options = connection

        try:
            self.from_email, self._message_id_domain = _check_sender(from_email)
        except ValueError as exc:
            raise ChannelConfigurationError(f"channel {name!r}: from_email {from_email!r} is not valid: {exc}") from None
        self.allow_from_override = bool(allow_from_override)

        # Build one backend now, so that bad connection options stop start-up (and
        # `manage.py check`) instead of failing at the first send. It opens no connection.
        try:
            self._new_backend()
        except (ImproperlyConfigured, TypeError, ValueError) as exc:
            hint = ""
            if self.is_esp and isinstance(exc, ImproperlyConfigured):
                # Anymail names its Django settings; a channel takes them as connection options.
                hint = " (give it in the channel's connection options by its lower-case name, e.g. connection = { api_key = \"${VAR}\" })"
            raise ChannelConfigurationError(f"channel {name!r}: {backend} rejects its connection options: {exc}{hint}") from exc

    # --- intake ------------------------------------------------------------------------------

    def validate(self, message: Message) -> Message:
        message = validate_email_message(message)
        override = message.metadata.get("from_email")
        if override is not None:
            if not self.allow_from_override:
                raise InvalidMessage("metadata", f"from_email may not be set for channel {self.name!r}")
            if not isinstance(override, str):
                raise InvalidMessage("metadata", "from_email must be a string")
            try:
                _check_sender(override)
            except ValueError as exc:
                raise InvalidMessage("metadata", f"from_email is not a valid sender: {exc}") from None
        return message

    # --- sending -----------------------------------------------------------------------------

    def send(self, message: Message) -> str:
        connection = self._new_backend()
        email = self._build(message, connection)
        try:
            connection.open()
            sent = connection.send_messages([email])
        except Exception as exc:
            _close_quietly(connection)
            error = self._classify(exc)
            if error is None:
                raise
            raise error from exc
        _close_quietly(connection)
        if not sent:
            raise PermanentChannelError(f"{self.backend_path} sent nothing (no recipient, or the send was cancelled)", channel=self.name)
        if self.is_esp:
            return str(email.anymail_status.message_id or "")
        return email.extra_headers["Message-ID"]

    def _new_backend(self) -> BaseEmailBackend:
        return self.backend_class(fail_silently=False, **self.connection_options)

    def _build(self, message: Message, connection: BaseEmailBackend) -> EmailMessage:
        from_email = self.from_email
        override = message.metadata.get("from_email")
        if self.allow_from_override and isinstance(override, str):
            from_email = override
        headers = {}
        if message.notification_id:
            headers["X-Notify-Notification-Id"] = message.notification_id
        if not self.is_esp:
            # Our own Message-ID, so that we know it (it is the SMTP send's message id) and
            # so that Django need not look up this host's FQDN for one.
            headers["Message-ID"] = make_msgid(domain=self._message_id_domain)
        # Text and HTML as multipart/alternative (every Anymail ESP takes it as text and html).
        email = EmailMultiAlternatives(
            subject=message.subject,
            body=message.body,
            from_email=from_email,
            to=[message.recipient],
            headers=headers,
            connection=connection,
        )
        if message.html:
            email.attach_alternative(message.html, "text/html")
        return email

    # --- failures: every provider's answer mapped in one place --------------------------------

    def _classify(self, exc: Exception) -> ChannelError | None:
        """Map a failed send to Transient or Permanent; None for an error that is not a send
        failure (a bug), which the caller re-raises."""
        # --- SMTP (smtplib, RFC 5321 reply codes: 4yz "transient negative completion",
        # 5yz "permanent negative completion") ---
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            # "All recipients were refused": {address: (code, text)}. A 4xx (e.g. 450 mailbox
            # busy, 451 local error, 452 insufficient storage) is temporary, a 5xx (550
            # mailbox unavailable, 553 name not allowed) is not.
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(f"{addr}: {code} {_text(text)}" for addr, (code, text) in exc.recipients.items())
            status = codes[0] if len(codes) == 1 else None
            if codes and all(400 <= code < 500 for code in codes):
                return TransientChannelError(f"SMTP server deferred the recipient: {detail}", channel=self.name, status=status)
            return PermanentChannelError(f"SMTP server refused the recipient: {detail}", channel=self.name, status=status)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            # e.g. use_tls with a server that offers no STARTTLS: a configuration problem.
            return PermanentChannelError(f"SMTP server does not support what the channel needs: {exc}", channel=self.name)
        if isinstance(exc, smtplib.SMTPResponseException):
            # SMTPSenderRefused (MAIL FROM), SMTPDataError (DATA), SMTPConnectError (greeting,
            # e.g. 421 "service not available"), SMTPHeloError, SMTPAuthenticationError
            # (535 "authentication credentials invalid" is permanent, 454 temporary).
            code, text = exc.smtp_code, _text(exc.smtp_error)
            what = f"SMTP server answered {code} {text}"
            if 500 <= code < 600:
                return PermanentChannelError(what, channel=self.name, status=code)
            return TransientChannelError(what, channel=self.name, status=code)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TransientChannelError(f"SMTP server closed the connection: {exc or 'unexpectedly'}", channel=self.name)
        if isinstance(exc, smtplib.SMTPException):
            return TransientChannelError(f"SMTP error: {exc}", channel=self.name)

        # --- ESPs through Anymail ---
        if AnymailError is not None and isinstance(exc, AnymailError):
            return self._classify_esp(exc)

        # --- the network, for any backend ---
        if isinstance(exc, (socket.timeout, TimeoutError, requests.Timeout)):
            return TransientChannelError(f"timed out after {self.connection_options['timeout']}s talking to the mail server", channel=self.name)
        if isinstance(exc, (OSError, requests.ConnectionError)):  # refused, reset, unreachable, TLS
            return TransientChannelError(f"cannot reach the mail server: {exc}", channel=self.name)
        return None

    def _classify_esp(self, exc: Exception) -> ChannelError | None:
        esp = self.esp_name
        if isinstance(exc, AnymailRecipientsRefused):
            # Anymail: "all message recipients were rejected or invalid" (the ESP's status
            # "rejected" or "invalid" for every recipient: bounced, unsubscribed, blocked).
            return PermanentChannelError(f"{esp} rejected the recipient", channel=self.name)
        if isinstance(exc, requests.Timeout):
            return TransientChannelError(f"{esp} did not answer within {self.connection_options['timeout']}s", channel=self.name)
        if isinstance(exc, requests.ConnectionError):
            return TransientChannelError(f"cannot reach {esp}: {exc.__cause__ or exc}", channel=self.name)
        if isinstance(exc, requests.RequestException) and getattr(exc, "status_code", None) is None:
            # The answer could not be read (cut off, too large): Channel.deliver judges it by
            # the HTTP status it came with.
            return None
        status = getattr(exc, "status_code", None)
        response = getattr(exc, "response", None)
        if isinstance(status, int) and 200 <= status < 300:
            # The ESP took the message but Anymail could not parse its answer: not a failure.
            return None
        if not isinstance(status, int):
            # AnymailInvalidAddress, AnymailUnsupportedFeature, AnymailSerializationError:
            # the message cannot be sent as it stands.
            return PermanentChannelError(f"{esp} cannot send this message: {exc.args[0] if exc.args else exc}", channel=self.name)
        what = f"{esp} answered HTTP {status}: {_esp_error(response)}"
        # Brevo: 400 "invalid_parameter" / "missing_parameter", 401 "unauthorized" (a bad
        # api-key), 402 "not_enough_credits", 403 "permission_denied" (e.g. unauthorised IP),
        # 429 too many requests (x-sib-ratelimit-reset: seconds until the window resets);
        # other ESPs answer in the same HTTP terms.
        if status == 429:
            return TransientChannelError(what, channel=self.name, status=status, retry_after=_esp_retry_after(response))
        if status == 408 or status >= 500:
            return TransientChannelError(what, channel=self.name, status=status, retry_after=_esp_retry_after(response))
        return PermanentChannelError(what, channel=self.name, status=status)

    def receipts_route(self) -> str | None:
        """Anymail's tracking view of this channel's ESP (the last part of its backend's
        module: anymail.backends.brevo -> brevo), if it has one."""
        if not self.is_esp:
            return None
        esp = self.backend_class.__module__.rsplit(".", 1)[-1]
        return f"receipts/anymail/{esp}/tracking/"

    def describe(self) -> dict:
        return {
            **super().describe(),
            "limits": LIMITS["email"],
            "email_backend": self.backend_path,
            "from_email": self.from_email,
            "allow_from_override": self.allow_from_override,
        }


# --- helpers ------------------------------------------------------------------------------------


def _import_backend(name: str, path: str) -> type[BaseEmailBackend]:
    try:
        backend = import_string(path)
    except ImportError as exc:
        hint = ' (pip install "django-anymail[ESP]", e.g. django-anymail[brevo])' if path.startswith("anymail.") else ""
        raise ChannelConfigurationError(f"channel {name!r}: cannot import email backend {path!r}{hint}: {exc}") from exc
    if not (isinstance(backend, type) and issubclass(backend, BaseEmailBackend)):
        raise ChannelConfigurationError(f"channel {name!r}: {path!r} is not a Django email backend")
    return backend


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _check_sender(sender: str) -> tuple[str, str]:
    """A sender "addr" or "Name <addr>" on one line; returns it and the address's ASCII domain."""
    if not isinstance(sender, str) or "\r" in sender or "\n" in sender:
        raise ValueError("must be one line of text")
    display_name, address = parseaddr(sender)
    if not address:
        raise ValueError("no address in it")
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return sender, checked.ascii_domain


def _close_quietly(connection: BaseEmailBackend) -> None:
    """Close a backend's connection. Once the message is handed over, a failing close (e.g.
    a dropped QUIT) must not turn a sent message into a failed one, and so into a duplicate."""
    try:
        connection.close()
    except Exception as exc:  # noqa: BLE001 - nothing to do but log it
        logger.info("closing the email connection failed: %s", exc)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _esp_error(response: requests.Response | None) -> str:
    """The ESP's own words: Brevo's {"code": ..., "message": ...}, or the start of the body."""
    if response is None:
        return "no response"
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and ("code" in data or "message" in data):
        return ": ".join(str(data[key]) for key in ("code", "message") if data.get(key) is not None)
    return (response.text or response.reason or "").strip()[:300]


def _esp_retry_after(response: requests.Response | None) -> float | None:
    """Retry-After, or Brevo's x-sib-ratelimit-reset (seconds until the limit resets)."""
    if response is None:
        return None
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if retry_after is None:
        retry_after = parse_retry_after(response.headers.get("x-sib-ratelimit-reset"))
    return retry_after


# --- receipts -----------------------------------------------------------------------------------

# Anymail's normalised event types (anymail.signals.EventType) -> what they mean here.
_ANYMAIL_OUTCOMES = {"delivered": receipts.DELIVERED, "bounced": receipts.UNDELIVERED,
                     "rejected": receipts.UNDELIVERED, "failed": receipts.UNDELIVERED}
_SUPPRESSING_EVENTS = {"bounced": "hard bounce", "complained": "complaint (marked as spam)",
                       "unsubscribed": "unsubscribed"}
# Raw event types that Anymail reports as "bounced" but that are temporary (Brevo's soft bounce):
# the ESP tries again, so they are history only.
_SOFT_BOUNCES = {"soft_bounce"}


def receipt_from_anymail(event: Any, esp_name: str) -> receipts.Receipt:
    """An Anymail tracking event (anymail.signals.AnymailTrackingEvent) as a receipt.
    Raises MalformedReceipt if it names no message."""
    message_id = event.message_id if isinstance(event.message_id, str) else ""
    if not message_id.strip():
        raise receipts.MalformedReceipt(f"a {esp_name} tracking event without a message id")
    event_type = str(event.event_type or "unknown")
    raw = event.esp_event.get("event") if isinstance(getattr(event, "esp_event", None), dict) else None
    soft = isinstance(raw, str) and raw in _SOFT_BOUNCES
    outcome = receipts.INFO if soft else _ANYMAIL_OUTCOMES.get(event_type, receipts.INFO)
    suppress = "" if soft else _SUPPRESSING_EVENTS.get(event_type, "")
    reject_reason = str(event.reject_reason or "")
    detail = event.mta_response or event.description or ""
    when = event.timestamp if hasattr(event.timestamp, "isoformat") else None
    return receipts.Receipt(
        source=f"anymail:{esp_name}", kind=EmailChannel.kind, provider_message_id=message_id, outcome=outcome,
        provider_status=f"{event_type} ({raw})" if isinstance(raw, str) and raw != event_type else event_type,
        error_code=reject_reason, detail=detail,
        suppress_reason=f"{esp_name}: {suppress}{f' ({detail})' if detail else ''}" if suppress else "",
        occurred_at=when,
        identity=f"{event.event_id}" if event.event_id else "",
    )
