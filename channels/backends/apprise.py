"""Chat and push services through Apprise (the `apprise` package): Microsoft Teams, Telegram,
Discord, Mattermost, Matrix, ntfy, Pushover and about a hundred more, one Apprise URL each.

    [channels.telegram]
    backend = "channels.backends.apprise.AppriseChannel"
    [channels.telegram.options]
    url = "tgram://${TELEGRAM_BOT_TOKEN}/{to}"   # {to}: the notification's recipient
    recipient_pattern = '^-?[0-9]{5,20}$|^@[A-Za-z][A-Za-z0-9_]{4,31}$'

Options:
- `url`: an Apprise URL (https://appriseit.com/services/), `${VAR}` for its secrets. `{to}`
  stands for the notification's recipient where the service takes one (a Telegram chat id, an
  ntfy topic, a Mattermost channel), URL-quoted whole, so that a recipient can add no URL
  argument; one holding what Apprise splits targets on (spaces, commas, semicolons,
  brackets, slashes) is refused, so that it reaches one target. Without `{to}` every
  notification goes to the URL's own targets, and `to` is only recorded.
- `targets`: instead of `url`, named URLs (a table key -> Apprise URL); a notification's `to`
  is a key, as with the webhook channel.
- `recipient_pattern`: a regular expression the whole of `to` must match at intake (400
  otherwise); default DEFAULT_RECIPIENT_PATTERN. With `targets`, `to` must be a key as well.
- `format`: what `message` is written in, "text" (default) or "markdown"; Apprise converts it
  to what the service speaks. `subject` is the title.
- `timeout` (seconds, default 10): the send's deadline, everything included.

Every URL is checked at start (Apprise parses it, knows the service and can use it here, the
service's plugin accepts what the URL says, `{to}` changes where it sends, no `retry=`), and
an error names the channel and the scheme, never the URL: Apprise URLs carry their secrets
(tokens, passwords, webhook signatures) in the URL itself.

How a send runs, and why:
- The plugin runs on the send's own thread, the one `Channel.deliver` puts under the deadline
  (channels.deadline): the Apprise asset says `async_mode=False` and `service_timeout=0`, so
  Apprise neither hands the plugin to its own thread pool (where our deadline and socket
  cut-off could not follow it) nor keeps its own 60 s limit. Its socket timeouts (`cto`,
  `rto`, 4 s by default) become the send's timeout unless the URL sets shorter ones.
- Apprise does not retry (`retry=0`; a URL that sets `retry=` is refused at start): the
  dispatcher retries, with its backoff and its attempt cap. Apprise's throttle (up to 5.5 s
  between a plugin's requests) is off: the channel's `rate_limit` is the fleet's budget.
- A fresh plugin per send: plugins keep state (throttle clocks, rate-limit counters, found
  chat ids), and sends run on many threads at once.
- Apprise answers a send with true or false only. What failed is in the warning its plugin
  logs, read through Apprise's per-call log capture: by Apprise's convention it ends with the
  HTTP status the plugin saw, "error=<status>" (see `_status_of`).
- Apprise's logger does not propagate to ours, and its level is WARNING: its debug lines print
  request URLs with their tokens in them (Discord, Telegram, Mattermost). What a send's
  warnings say reaches our error texts only with the URL's secrets replaced by [REDACTED];
  so do urllib3's debug lines, which print each request's path (`_RedactServiceSecrets`).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote, unquote

try:
    from apprise import Apprise, AppriseAsset, NotifyFormat, PersistentStoreMode
    from apprise.plugins import N_MGR, url_to_dict
except ImportError as exc:  # the registry reports this by channel name
    raise ImportError(f"the Apprise channel needs the apprise package (pip install apprise): {exc}") from exc

from ..base import Channel, Message
from ..errors import ChannelConfigurationError, InvalidMessage, PermanentChannelError, TransientChannelError

RECIPIENT = "{to}"
# Letters, digits and the punctuation of chat ids, topics, room ids and aliases (-100123,
# @channel, alerts_prod, !room:example.org, #town-square), one line of at most 255.
DEFAULT_RECIPIENT_PATTERN = r"[A-Za-z0-9_.@#!:+=-]{1,255}"
FORMATS = {"text": NotifyFormat.TEXT, "markdown": NotifyFormat.MARKDOWN}
# Where Apprise splits one URL into several targets: its list delimiters (whitespace, comma,
# semicolon, brackets; apprise.utils.parse.STRING_DELIMITERS) and the path's slashes, unquoted
# first. A recipient holding one would reach two targets, whatever recipient_pattern allows.
_TARGET_SEPARATORS = re.compile(r"[\s,;\[\]/\\]")
# What stands for the recipient while a URL with {to} is checked at start; two of them, to
# see that the recipient changes where the plugin sends.
_PROBE_RECIPIENTS = ("notifyprobe", "notifyother")
REDACTED = "[REDACTED]"
SECRET_MIN_LENGTH = 4  # shorter pieces of a URL are not looked for: they would match ordinary words
# Plugin attributes whose values are credentials (bot_token, webhook_token, password, apikey, ...).
_SECRET_ATTRIBUTE = re.compile(r"token|secret|passw|api_?key|_key$|^key$|signature|webhook_id|credential", re.IGNORECASE)
_URL_SEPARATORS = re.compile(r"[/:@?&=#,;\s]+")
# The HTTP status a plugin saw, as Apprise's plugins end the warning they log for a refused
# request: "Failed to send ntfy notification to topic 'alerts': Forbidden, error=403.",
# "Failed to send Discord notification: Not Found, error=404.". ntfy puts its own error code
# there when its JSON answer has one: the HTTP status times 100, plus n (40301, "forbidden").
_STATUS_IN_LOG = re.compile(r"\berror=(\d{5}|\d{3})\b")


def _quiet_apprise_logger() -> None:
    """Apprise's records go only to the per-call captures it attaches (and a NullHandler, so
    that Python's last-resort handler never prints them): see the module docstring."""
    apprise_logger = logging.getLogger("apprise")
    apprise_logger.propagate = False
    apprise_logger.setLevel(logging.WARNING)
    if not any(isinstance(h, logging.NullHandler) for h in apprise_logger.handlers):
        apprise_logger.addHandler(logging.NullHandler())


_quiet_apprise_logger()


class _RedactServiceSecrets(logging.Filter):
    """On urllib3's loggers, under every Apprise plugin: at DEBUG they print each request's
    path ('"POST /hooks/<token> HTTP/1.1" 200', '/bot<token>/sendMessage'), where Mattermost,
    Telegram, Discord and others carry their token. The root handler's filter knows only the
    channels' secret-named options, and an Apprise URL's secrets sit in its `url`."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: tuple[str, ...]) -> None:
        with self._lock:
            self._secrets = tuple(sorted(set(self._secrets) | set(secrets), key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if secrets:
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string: the handler reports it
                return True
            cleaned = _redact(text, secrets)
            if cleaned != text:
                record.msg, record.args = cleaned, ()
        return True


_urllib3_filter = _RedactServiceSecrets()
for _name in ("urllib3", "urllib3.connectionpool", "urllib3.connection", "urllib3.poolmanager", "urllib3.response",
              "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(_urllib3_filter)


@dataclass(frozen=True)
class _Service:
    """One configured Apprise URL, checked."""

    url: str  # with {to} where the recipient goes; holds secrets: never shown
    service_name: str
    takes_recipient: bool
    targets: int  # how many targets Apprise counts in the URL (len(plugin)) with one recipient
    connect_timeout: float
    read_timeout: float
    secrets: tuple[str, ...]  # what of the URL to redact from Apprise's words, longest first


class AppriseChannel(Channel):
    """A channel to any service Apprise speaks to, configured by one Apprise URL (or named
    URLs); see the module docstring for the options and how a send runs."""

    kind = "apprise"

    def __init__(
        self,
        name: str,
        *,
        url: str | None = None,
        targets: Mapping[str, str] | None = None,
        recipient_pattern: str = DEFAULT_RECIPIENT_PATTERN,
        format: str = "text",
        timeout: float = 10.0,
    ):
        super().__init__(name, timeout=timeout)
        _quiet_apprise_logger()  # again: a logging configuration may have run since import
        if (url is None) == (targets is None):
            raise ChannelConfigurationError(f"channel {name!r}: set either url (an Apprise URL) or targets "
                                            f"(named Apprise URLs), not {'both' if url else 'neither'}")
        if format not in FORMATS:
            raise ChannelConfigurationError(f"channel {name!r}: format must be one of {sorted(FORMATS)}, not {format!r}")
        if not isinstance(recipient_pattern, str) or not recipient_pattern:
            raise ChannelConfigurationError(f"channel {name!r}: recipient_pattern must be a regular expression")
        try:
            self.recipient_pattern = re.compile(recipient_pattern)
        except re.error as exc:
            raise ChannelConfigurationError(f"channel {name!r}: recipient_pattern is not a regular expression: {exc}") from None
        self.format = format
        # One asset for every send of the channel (it holds settings, no per-send state). What
        # a plugin keeps between calls (a chat id it looked up) stays in memory: a dispatcher
        # writes no files.
        self._asset = AppriseAsset(async_mode=False, service_timeout=0, secure_logging=True,
                                   storage_mode=PersistentStoreMode.MEMORY)
        if url is not None:
            self._service: _Service | None = self._check(url, "url", recipient_allowed=True)
            self.targets: dict[str, _Service] = {}
        else:
            if not isinstance(targets, Mapping) or not targets:
                raise ChannelConfigurationError(f"channel {name!r}: targets must be a table of names and Apprise URLs")
            self._service = None
            self.targets = {str(key): self._check(target, f"target {key!r}", recipient_allowed=False)
                            for key, target in targets.items()}

    # --- start: every URL checked ---------------------------------------------------------------

    def _check(self, url: Any, where: str, *, recipient_allowed: bool) -> _Service:
        """The service behind `url`, or ChannelConfigurationError naming the channel, `where`
        and the URL's scheme (never the URL: its secrets are in it)."""
        prefix = f"channel {self.name!r}: {where}"
        if not isinstance(url, str) or not url.strip():
            raise ChannelConfigurationError(f"{prefix} must be an Apprise URL, e.g. ntfy://ntfy.example.com/{RECIPIENT}")
        takes_recipient = RECIPIENT in url
        if takes_recipient and not recipient_allowed:
            raise ChannelConfigurationError(f"{prefix}: {RECIPIENT} has no place in a target (the notification's "
                                            f"`to` names the target); use url for a recipient in the URL")
        scheme = _scheme(url)
        probes = [url.replace(RECIPIENT, quote(probe, safe="")) for probe in _PROBE_RECIPIENTS] if takes_recipient else [url]
        plugins = [self._plugin_at_start(probe, prefix, scheme) for probe in probes]
        plugin = plugins[0]
        if takes_recipient and plugins[0].url(privacy=False) == plugins[1].url(privacy=False):
            raise ChannelConfigurationError(f"{prefix}: the {plugin.service_name} service takes no recipient where "
                                            f"{RECIPIENT} stands in its URL (it would be ignored)")
        explicit = url_to_dict(probes[0], secure_logging=True) or {}  # what the URL itself sets
        retry = explicit.get("retry")
        if retry not in (None, "", "0"):
            raise ChannelConfigurationError(f"{prefix}: remove retry= from the URL: the dispatcher retries a failed "
                                            f"send (OUTBOX_MAX_ATTEMPTS), Apprise must not retry within one")
        # The URL's own socket timeouts only where shorter than the send's deadline.
        connect = min(plugin.socket_connect_timeout, self.send_timeout) if "cto" in explicit else self.send_timeout
        read = min(plugin.socket_read_timeout, self.send_timeout) if "rto" in explicit else self.send_timeout
        secrets = _secrets_of(plugins, url)
        _urllib3_filter.add(secrets)
        return _Service(url=url, service_name=plugin.service_name, takes_recipient=takes_recipient,
                        targets=len(plugin), connect_timeout=connect, read_timeout=read, secrets=secrets)

    def _plugin_at_start(self, url: str, prefix: str, scheme: str):
        shown = f"{scheme}://" if scheme else "a URL without a scheme"
        if scheme and scheme.lower() not in N_MGR and scheme.lower() not in ("http", "https"):
            raise ChannelConfigurationError(f"{prefix}: Apprise knows no service {shown} "
                                            f"(the services and their URLs: https://appriseit.com/services/)")
        if scheme and scheme.lower() in N_MGR and not N_MGR[scheme.lower()].enabled:
            requirements = getattr(N_MGR[scheme.lower()], "requirements", None) or {}
            needs = requirements.get("packages_required") or requirements.get("details") or "a package it needs"
            raise ChannelConfigurationError(f"{prefix}: the {N_MGR[scheme.lower()].service_name} service ({shown}) is not "
                                            f"available here: it needs {needs}")
        try:
            plugin = Apprise.instantiate(url, asset=self._asset, suppress_exceptions=False)
        except Exception as exc:  # noqa: BLE001 - a plugin's constructor refuses what it cannot use
            # Its words may quote the URL's parts (a key it found invalid): those are redacted.
            words = _redact(f"{exc}", sorted(_url_pieces(url), key=len, reverse=True))
            raise ChannelConfigurationError(f"{prefix}: the {_service_name(scheme)} service refuses the URL "
                                            f"({shown}): {words}") from None
        if plugin is None:
            raise ChannelConfigurationError(f"{prefix}: Apprise cannot parse the URL ({shown}) as one of its "
                                            f"services (the services and their URLs: https://appriseit.com/services/)")
        return plugin

    # --- intake -----------------------------------------------------------------------------------

    def validate(self, message: Message) -> Message:
        if self._service is not None and self._service.takes_recipient and _TARGET_SEPARATORS.search(message.recipient):
            raise InvalidMessage("to", "one recipient, without spaces, commas, semicolons, brackets or slashes")
        if not self.recipient_pattern.fullmatch(message.recipient):
            raise InvalidMessage("to", f"does not match the recipients of channel {self.name!r}: "
                                       f"{self.recipient_pattern.pattern}")
        if self._service is None and message.recipient not in self.targets:
            raise InvalidMessage("to", f"not a target of channel {self.name!r}: expected one of {', '.join(sorted(self.targets))}")
        return message

    # --- sending ----------------------------------------------------------------------------------

    def send(self, message: Message) -> str:
        service = self._service or self.targets.get(message.recipient)
        if service is None:  # the channel's targets changed since intake
            raise PermanentChannelError(f"{message.recipient!r} is not a target of this channel", channel=self.name)
        if service.takes_recipient and _TARGET_SEPARATORS.search(message.recipient):  # accepted before the rule
            raise PermanentChannelError(f"{message.recipient!r} would reach several targets", channel=self.name)
        url = service.url.replace(RECIPIENT, quote(message.recipient, safe="")) if service.takes_recipient else service.url
        plugin = Apprise.instantiate(url, asset=self._asset)
        if plugin is None:  # it was checked at start with a valid recipient: this one is refused
            raise PermanentChannelError(f"{service.service_name} refuses the recipient {message.recipient!r}",
                                        channel=self.name)
        plugin.retry = 0  # the dispatcher retries (and the asset's default is 0 too)
        if len(plugin) != service.targets:  # the recipient split into several targets (see _TARGET_SEPARATORS)
            raise PermanentChannelError(f"{service.service_name} reads {message.recipient!r} as {len(plugin)} targets, "
                                        f"not one", channel=self.name)
        plugin.request_rate_per_sec = 0  # no throttle sleeps: the fleet's rate_limit budgets the channel
        plugin.socket_connect_timeout = service.connect_timeout
        plugin.socket_read_timeout = service.read_timeout

        sender = Apprise(asset=self._asset)
        sender.add(plugin)
        with sender.notify(body=message.body, title=message.subject, body_format=FORMATS[self.format],
                           log_level=logging.WARNING) as result:
            if result:
                return ""  # Apprise gives no provider message id
            said = [entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR", "CRITICAL")]
        raise self._outcome(service, said)

    # --- outcomes: every answer mapped in one place -----------------------------------------------

    def _outcome(self, service: _Service, said: list[str]) -> TransientChannelError | PermanentChannelError:
        """What the plugin's warnings say -> our error kind, by the HTTP status it saw."""
        said = [_redact(line, service.secrets) for line in said]
        status, line = _status_of(said)
        if status is None:
            # No HTTP answer (connection refused, timed out, cut off at the deadline), or a
            # failure the plugin does not describe with a status: transient, and the
            # dispatcher's attempt cap bounds how often it is tried.
            detail = said[-1] if said else "Apprise reported a failure without a reason"
            return TransientChannelError(f"{service.service_name}: {detail}", channel=self.name)
        detail = f"{service.service_name} answered HTTP {status}: {line}"
        # 408 Request Timeout, 429 Too Many Requests and 5xx may pass; any other 4xx (400 bad
        # request, 401/403 a wrong or revoked token, 404 an unknown webhook, topic or chat, 413
        # too large) will not change on a retry. (Apprise follows redirects, so a 3xx seen here
        # is one it could not follow: transient, as anything that is not a refusal.)
        if 400 <= status < 500 and status not in (408, 429):
            return PermanentChannelError(detail, channel=self.name, status=status)
        return TransientChannelError(detail, channel=self.name, status=status)

    def describe(self) -> dict[str, Any]:
        # The service's name only: Apprise URLs carry their secrets.
        shown: dict[str, Any] = {"limits": {}, "recipient_pattern": self.recipient_pattern.pattern, "format": self.format}
        if self._service is not None:
            shown["service"] = self._service.service_name
        else:
            shown["targets"] = {key: service.service_name for key, service in sorted(self.targets.items())}
        return {**super().describe(), **shown}


def _status_of(said: list[str]) -> tuple[int | None, str]:
    """The last HTTP status the plugin's warnings name, with the warning naming it."""
    for line in reversed(said):
        match = _STATUS_IN_LOG.search(line)
        if match:
            code = int(match.group(1))
            status = code // 100 if code >= 10000 else code  # ntfy's 40301 -> HTTP 403
            if 100 <= status <= 599:
                return status, line
    return None, ""


def _scheme(url: str) -> str:
    match = re.match(r"^\s*([A-Za-z][A-Za-z0-9+.-]{0,31})://", url)
    return match.group(1) if match else ""


def _service_name(scheme: str) -> str:
    plugin = N_MGR[scheme.lower()] if scheme and scheme.lower() in N_MGR else None
    return plugin.service_name if plugin is not None else "Apprise"


def _url_pieces(url: str) -> set[str]:
    """The parts of a URL between its separators, as written and unquoted, but its scheme
    (which names the service: no secret)."""
    pieces: set[str] = set()
    for form in (url, unquote(url)):
        pieces.update(p for p in _URL_SEPARATORS.split(form) if len(p) >= SECRET_MIN_LENGTH)
    return {p for p in pieces if p.lower() not in (_scheme(url).lower(), "http", "https")}


def _secrets_of(plugins: list, url: str) -> tuple[str, ...]:
    """What of an Apprise URL must never be shown: the parts that Apprise itself masks in its
    privacy form of the URL (url(privacy=True)), and every credential-named attribute of the
    plugin; longest first, so that a secret is redacted whole before any part of it."""
    secrets: set[str] = set()
    for plugin in plugins:
        shown = _url_pieces(plugin.url(privacy=True))
        secrets.update(_url_pieces(plugin.url(privacy=False)) - shown)
        for attribute, value in vars(plugin).items():
            if _SECRET_ATTRIBUTE.search(attribute) and isinstance(value, str) and len(value) >= SECRET_MIN_LENGTH:
                secrets.add(value)
                secrets.add(quote(value, safe=""))
    secrets.add(url)
    secrets.discard(RECIPIENT)
    secrets.difference_update(_PROBE_RECIPIENTS)
    return tuple(sorted(secrets, key=len, reverse=True))


def _redact(text: str, secrets) -> str:
    """`text` with every one of `secrets` replaced by [REDACTED] (pass them longest first)."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


