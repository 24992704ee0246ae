"""SMS through Twilio's Messages API, with the official `twilio` package.

    [channels.sms]
    backend = "channels.backends.twilio_sms.TwilioSmsChannel"
    [channels.sms.options]
    account_sid = "${TWILIO_ACCOUNT_SID}"
    auth_token = "${TWILIO_AUTH_TOKEN}"
    from_number = "+14155550100"          # or messaging_service_sid = "MG..."

Options:
- `account_sid`, `auth_token`: the account's credentials (required; keep them in the environment).
- `from_number` or `messaging_service_sid`: exactly one; the sender Twilio sends from.
- `base_url`: the API's root, default "https://api.twilio.com" (a regional endpoint such as
  "https://api.dublin.ie1.twilio.com", or a local stand-in in tests).
- `timeout`: the send's deadline in seconds, everything included (default 10).
- `status_callback_url`: where Twilio posts the message's delivery receipts, the service's
  `/receipts/twilio/<channel name>` as the Internet reaches it (`GET /api/v1/channels` shows
  it as `receipts_url`). Set on every message as its StatusCallback; unset, Twilio sends no
  receipts and notifications stay `sent`.

`send()` creates the message (POST /2010-04-01/Accounts/{AccountSid}/Messages.json) and returns
its SID. Twilio accepting the request only queues the message. An answer that already says the
message failed is a failure, not a success. A 2xx answer that cannot be read (not JSON, too
large, cut off) still means Twilio created the message: it counts as sent, without a SID.
Error 21610 (the recipient replied STOP) adds the recipient to the client's suppression list.

Receipts (`receipts_from_callback`): Twilio's status callbacks, verified with the SDK's
RequestValidator against the channel's auth token (X-Twilio-Signature over the exact URL and
the form fields). MessageStatus `delivered` -> delivered; `undelivered` and `failed` ->
undelivered, with ErrorCode; any other status is history only. ErrorCode 21610 suppresses.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Mapping

try:
    from twilio.base.exceptions import TwilioRestException, TwilioServiceException
    from twilio.http.http_client import TwilioHttpClient
    from twilio.request_validator import RequestValidator
    from twilio.rest import Client
except ImportError as exc:  # the registry reports this by channel name
    raise ImportError(f"the Twilio SMS channel needs the twilio package (pip install twilio): {exc}") from exc

from .. import receipts
from ..base import Channel, Message
from ..errors import ChannelConfigurationError, PermanentChannelError, RecipientRefusedError, TransientChannelError
from ..retry_after import parse_retry_after
from ..validation import LIMITS, validate_sms_message

logger = logging.getLogger("channels.twilio_sms")

TWILIO_API_URL = "https://api.twilio.com"

# Twilio's error codes (https://www.twilio.com/docs/api/errors) that decide a failure's kind,
# each with Twilio's own title. A code in neither table is decided by the HTTP status (see
# `_error`): Twilio keeps adding more specific codes for the same conditions, so the status
# is the fallback that keeps working.
PERMANENT_CODES = {
    20003: "Permission Denied (authenticate: wrong Account SID / Auth Token, or account suspended)",
    20404: "The requested resource was not found",
    21211: "Invalid 'To' Phone Number",
    21212: "Invalid 'From' Phone Number",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number",
    21610: "Attempt to send to unsubscribed recipient (the recipient replied STOP)",
    21612: "The 'To' phone number is not currently reachable via SMS",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit",
}
TRANSIENT_CODES = {
    20429: "Too Many Requests",  # HTTP 429: "safe to retry after backing off"
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    # A 400, but a momentary one: "You have attempted to enqueue too many messages for a given
    # 'From' number" -- the queue drains at the sender's rate, so later the same send succeeds.
    21611: "This 'From' number has exceeded the maximum number of queued messages",
}
# Codes that mean the recipient will never take our messages: later ones are suppressed.
OPT_OUT_CODES = {21610}
# Statuses of a just-created message that mean Twilio has already given up on it.
FAILED_STATUSES = {"failed", "undelivered"}
# A message's SID: SM (SMS) or MM (MMS) and 32 hexadecimal digits.
MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
SIGNATURE_HEADER = "X-Twilio-Signature"


class TwilioSmsChannel(Channel):
    kind = "sms"
    accepted_on_http_2xx = True  # 201 Created
    receipts_path = "receipts/twilio/{name}"

    def __init__(
        self,
        name: str,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str = TWILIO_API_URL,
        status_callback_url: str | None = None,
        timeout: float = 10.0,
    ):
        super().__init__(name, timeout=timeout, account_sid=account_sid, from_number=from_number,
                         messaging_service_sid=messaging_service_sid, base_url=base_url,
                         status_callback_url=status_callback_url)
        if not account_sid or not auth_token:
            raise ChannelConfigurationError(f"channel {name!r}: account_sid and auth_token are required")
        if bool(from_number) == bool(messaging_service_sid):
            raise ChannelConfigurationError(f"channel {name!r}: set exactly one of from_number and messaging_service_sid")
        if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
            raise ChannelConfigurationError(f"channel {name!r}: base_url must be an http(s) URL, not {base_url!r}")
        if status_callback_url is not None and (
                not isinstance(status_callback_url, str) or not status_callback_url.startswith(("https://", "http://"))):
            raise ChannelConfigurationError(f"channel {name!r}: status_callback_url must be an http(s) URL")

        self.account_sid = account_sid
        self.status_callback_url = status_callback_url or None
        self._validator = RequestValidator(auth_token)
        self.sender = {"from_": from_number} if from_number else {"messaging_service_sid": messaging_service_sid}
        self.base_url = base_url
        self._http = _HttpClient(timeout=self.send_timeout)
        client = Client(account_sid, auth_token, http_client=self._http)
        # base_url alone decides the host: TWILIO_EDGE / TWILIO_REGION in the environment
        # would otherwise make the SDK rewrite it.
        client.edge = client.region = None
        client.api.base_url = base_url
        # Resolved once here: the SDK builds these lazily, which is not thread-safe.
        self._messages = client.api.v2010.account.messages

    def validate(self, message: Message) -> Message:
        return validate_sms_message(message)

    def send(self, message: Message) -> str:
        try:
            extra = {"status_callback": self.status_callback_url} if self.status_callback_url else {}
            created = self._messages.create(to=message.recipient, body=message.body, **self.sender, **extra)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self._error(exc) from exc
        # Timeouts, connection failures and answers that cannot be read are Channel.deliver's
        # to judge: a 201 that cannot be read still created the message.

        status = str(created.status or "")
        if status in FAILED_STATUSES:
            # Created, but already given up on: the previous system reported this as sent.
            raise PermanentChannelError(
                f"Twilio created message {created.sid} but reported it {status}: "
                f"error {created.error_code}: {created.error_message or 'no message'}",
                channel=self.name, status=created.error_code or status,
            )
        if not created.sid:
            raise TransientChannelError(f"Twilio answered without a message SID (status {status!r})", channel=self.name)
        return created.sid

    def _error(self, exc: TwilioRestException | TwilioServiceException) -> TransientChannelError | PermanentChannelError:
        """Twilio's error answer -> our error, carrying Twilio's code, words and Retry-After."""
        code, http_status = exc.code, exc.status
        if isinstance(exc, TwilioServiceException):
            text = f"{exc.title}{f': {exc.detail}' if exc.detail else ''}"
        else:
            text = exc.msg
        described = f"Twilio error {code} (HTTP {http_status}): {text}"
        if _is_transient(code, http_status):
            retry_after = parse_retry_after(self._http.last_response_headers().get("Retry-After"))
            return TransientChannelError(described, channel=self.name, status=code, retry_after=retry_after)
        if code in OPT_OUT_CODES:
            return RecipientRefusedError(described, channel=self.name, status=code)
        return PermanentChannelError(described, channel=self.name, status=code)

    def receipts_from_callback(self, *, url: str, params: Mapping[str, Any], headers: Mapping[str, str]) -> list[receipts.Receipt]:
        """Twilio's status callback for one message, as a receipt.

        `url` is the URL the request reached (the configured status_callback_url is used
        instead when set: Twilio signs the URL it was given, which a proxy may have rewritten);
        `params` the form fields, as a QueryDict or a dict. Raises ForgedReceipt when the
        signature is missing or wrong, or the callback is for another account, and
        MalformedReceipt when a field Twilio always sends is missing or malformed.
        """
        signature = headers.get(SIGNATURE_HEADER)
        if not signature or not self._validator.validate(self.status_callback_url or url, params, signature):
            raise receipts.ForgedReceipt(f"no valid {SIGNATURE_HEADER} for channel {self.name!r}")
        if params.get("AccountSid") != self.account_sid:
            raise receipts.ForgedReceipt("the callback is for another Twilio account")
        sid = params.get("MessageSid") or ""
        status = params.get("MessageStatus") or params.get("SmsStatus") or ""
        if not MESSAGE_SID.fullmatch(sid) or not status:
            raise receipts.MalformedReceipt("a status callback needs MessageSid (SM/MM and 32 hex digits) and MessageStatus")
        error_code = params.get("ErrorCode") or ""
        outcome = {"delivered": receipts.DELIVERED, "undelivered": receipts.UNDELIVERED,
                   "failed": receipts.UNDELIVERED}.get(status, receipts.INFO)
        code = int(error_code) if error_code.isdigit() else None
        title = PERMANENT_CODES.get(code) or TRANSIENT_CODES.get(code) or ""
        return [receipts.Receipt(
            source=f"twilio:{self.name}", kind=self.kind, provider_message_id=sid, outcome=outcome,
            provider_status=status, error_code=error_code, detail=title,
            suppress_reason=f"Twilio error {code}: {title}" if code in OPT_OUT_CODES else "",
        )]

    def describe(self) -> dict[str, Any]:
        sender = self.sender.get("from_") or self.sender.get("messaging_service_sid")
        return {**super().describe(), "limits": LIMITS["sms"], "sender": sender}


def _is_transient(code: int | None, http_status: int) -> bool:
    """The mapping: Twilio's code first (the tables above), then the HTTP status."""
    if code in TRANSIENT_CODES or http_status == 429:
        return True
    if code in PERMANENT_CODES:
        return False
    # A 5xx or 408 is Twilio's side or the way there. Any other 4xx is a refusal of this
    # request as it stands (whatever new code Twilio gives it): sending it again won't help.
    return http_status >= 500 or http_status == 408


class _HttpClient(TwilioHttpClient):
    """TwilioHttpClient that keeps the last answer's headers per thread.

    The SDK's exceptions drop the response headers, and Retry-After is among them. Sends run
    concurrently on dispatcher threads, so the record is thread-local. The SDK's own per-request
    INFO logging (eight lines a send) is turned down to one DEBUG line.
    """

    def __init__(self, *, timeout: float):
        super().__init__(timeout=timeout, logger=logger)
        self._local = threading.local()

    def request(self, method, url, *args, **kwargs):
        self._local.headers = {}
        response = super().request(method, url, *args, **kwargs)
        self._local.headers = response.headers or {}
        return response

    def last_response_headers(self):
        return getattr(self._local, "headers", {})

    def log_request(self, kwargs):
        logger.debug("Twilio request %s %s", kwargs["method"], kwargs["url"])

    def log_response(self, status_code, response):
        logger.debug("Twilio response %s", status_code)

