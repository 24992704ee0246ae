"""Slack messages through the official `slack-sdk` WebClient (chat.postMessage).

    [channels.slack]
    backend = "channels.backends.slack.SlackChannel"
    options = { token = "${SLACK_BOT_TOKEN}" }

Options:
- `token`: a bot token (xoxb-...) with the chat:write scope (required; keep it in the environment).
- `base_url`: the Web API's root, default "https://slack.com/api/" (a local stand-in in tests).
- `timeout`: the send's deadline in seconds, everything included (default 10).

Recipients are channel ids (C..., G...), user ids (U..., W...; Slack opens the direct message)
or #channel-names. `send()` returns "<channel id>/<ts>", the message's address in Slack.

Slack answers most failures with HTTP 200 and `{"ok": false, "error": "<code>"}`; only
`"ok": true` is a success. The SDK's own retries stay off (`retry_handlers=[]`): the
dispatcher schedules retries, honouring Slack's Retry-After.
"""

from __future__ import annotations

import http.client
import logging
import re
from typing import Any, Mapping

try:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError
except ImportError as exc:  # the registry reports this by channel name
    raise ImportError(f"the Slack channel needs the slack-sdk package (pip install slack-sdk): {exc}") from exc

from ..base import Channel, Message
from ..errors import ChannelConfigurationError, PermanentChannelError, RecipientRefusedError, TransientChannelError
from ..retry_after import parse_retry_after
from ..validation import LIMITS, validate_slack_message

logger = logging.getLogger("channels.slack")

SLACK_API_URL = "https://slack.com/api/"
_SLACK_CODE = re.compile(r"^[a-z0-9_]+$")

# The recipient (a channel) is gone for good: it joins the client's suppression list.
GONE_CHANNEL_ERRORS = {"channel_not_found", "is_archived"}
# Slack's error codes for chat.postMessage (https://api.slack.com/methods/chat.postMessage
# and the Web API's common errors), in Slack's words.
PERMANENT_ERRORS = {
    "channel_not_found": "Value passed for channel was invalid.",
    "not_in_channel": "Cannot post user messages to a channel they are not in.",
    "is_archived": "Channel has been archived.",
    "msg_too_long": "Message text is too long.",
    "no_text": "No message text provided.",
    "restricted_action": "A workspace preference prevents the authenticated user from posting.",
    "restricted_action_read_only_channel": "Cannot post any message into a read-only channel.",
    "restricted_action_thread_only_channel": "Cannot post top-level messages into a thread-only channel.",
    "ekm_access_denied": "Administrators have suspended the ability to post a message.",
    "not_authed": "No authentication token provided.",
    "invalid_auth": "Some aspect of authentication cannot be validated.",
    "account_inactive": "Authentication token is for a deleted user or workspace.",
    "token_revoked": "Authentication token is for a deleted user or workspace or the app has been removed.",
    "token_expired": "Authentication token has expired.",
    "no_permission": "The workspace token used in this request does not have the permissions necessary.",
    "missing_scope": "The token used is not granted the specific scope permissions required.",
    "access_denied": "Access to a resource specified in the request is denied.",
}
TRANSIENT_ERRORS = {
    "ratelimited": "The request has been ratelimited.",  # HTTP 429 with Retry-After
    "rate_limited": "Application has posted too many messages.",
    "internal_error": "The server could not complete your operation(s) without encountering an error, "
                      "likely due to a transient issue on our end.",
    # "It's possible some aspect of the operation succeeded": a retry may post twice, which
    # at-least-once delivery accepts rather than lose the message.
    "fatal_error": "The server could not complete your operation(s) without encountering a catastrophic error.",
    "service_unavailable": "The service is temporarily unavailable.",
    "request_timeout": "The method was called via a POST request, but the POST data was either missing or truncated.",
    "team_added_to_org": "The workspace is undergoing migration to an Enterprise Organization; "
                         "Web API operations will be intermittently unavailable.",
    "org_login_required": "The workspace is undergoing an enterprise migration and will not be available until "
                          "migration is complete.",
}


class SlackChannel(Channel):
    kind = "slack"

    def __init__(self, name: str, *, token: str, base_url: str = SLACK_API_URL, timeout: float = 10.0):
        super().__init__(name, timeout=timeout, base_url=base_url)
        if not token or not token.strip():
            raise ChannelConfigurationError(f"channel {name!r}: token is required (a bot token, xoxb-...)")
        if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
            raise ChannelConfigurationError(f"channel {name!r}: base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url
        # No retry handlers: the SDK's default one resends after a dropped connection, which
        # could post twice, and its rate-limit handler would sleep on a dispatcher thread.
        # A WebClient keeps no per-call state (one urllib request per call): safe to share.
        self._client = WebClient(token=token, base_url=base_url, timeout=self.send_timeout, retry_handlers=[])

    def validate(self, message: Message) -> Message:
        return validate_slack_message(message)

    def send(self, message: Message) -> str:
        try:
            response = self._client.chat_postMessage(channel=message.recipient, text=message.body)
        except SlackApiError as exc:  # any answer but HTTP 200 with "ok": true
            raise self._error(exc.response.status_code, exc.response.data, exc.response.headers) from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, dropped connections
            timed_out = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
            if timed_out:
                raise TransientChannelError(f"Slack did not answer within {self.send_timeout:g}s", channel=self.name) from exc
            raise TransientChannelError(f"connection to Slack failed: {_describe(exc)}", channel=self.name) from exc
        channel, ts = response.get("channel"), response.get("ts")
        return "/".join(part for part in (channel, ts) if part)

    def _error(self, http_status: int, data: Any, headers: Mapping[str, str]) -> TransientChannelError | PermanentChannelError:
        """Slack's failed answer -> our error kind: the error code first, then the HTTP status."""
        error = data.get("error") if isinstance(data, dict) else None
        # Slack's codes are snake_case words; for a body that is not JSON (a proxy's error
        # page), the SDK puts its own sentence in "error" instead.
        code = error if isinstance(error, str) and _SLACK_CODE.match(error) else None
        if code:
            words = PERMANENT_ERRORS.get(code) or TRANSIENT_ERRORS.get(code)
            described = f"Slack error {code} (HTTP {http_status}){f': {words}' if words else ''}"
        else:
            described = f"Slack answered HTTP {http_status} without an error code{f': {error}' if error else ''}"

        if _is_transient(code, http_status):
            retry_after = parse_retry_after(_header(headers, "Retry-After"))
            return TransientChannelError(described, channel=self.name, status=code or http_status, retry_after=retry_after)
        if code in GONE_CHANNEL_ERRORS:  # later notifications to it are suppressed
            return RecipientRefusedError(described, channel=self.name, status=code)
        return PermanentChannelError(described, channel=self.name, status=code or http_status)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "limits": LIMITS["slack"]}


def _is_transient(code: str | None, http_status: int) -> bool:
    """The mapping: Slack's error code first (the tables above), then the HTTP status."""
    if code in TRANSIENT_ERRORS or http_status == 429:
        return True
    if code in PERMANENT_ERRORS:
        return False
    # An unknown code is permanent unless the status is a 5xx (or 408): Slack names every
    # passing condition in TRANSIENT_ERRORS (rate limits, internal errors, migrations), so a
    # code it answers with HTTP 200 that we don't know is a refusal of this request as it
    # stands (a new restriction, bad arguments, a wrong base_url), and retrying it for hours
    # would only delay the failure. A 5xx means Slack's side broke, whatever the body says.
    return http_status >= 500 or http_status == 408


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A header by case-insensitive name (the SDK hands over a plain dict)."""
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value[0] if isinstance(value, list) else value
    return None


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"

