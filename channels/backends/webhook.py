"""Webhooks: POST the notification as signed JSON to a URL.

    [channels.webhook]
    backend = "channels.backends.webhook.WebhookChannel"
    [channels.webhook.options]
    secret = "${WEBHOOK_SECRET}"
    targets = { ops = "https://hooks.example.com/notify" }

The request body is JSON: {"id", "to", "subject", "message", "metadata", "attempt", "sent_at"}.
Headers:
- `X-Notify-Timestamp`: Unix time in seconds when the request was signed.
- `X-Notify-Signature`: "sha256=" + hex HMAC-SHA256, keyed with the channel's secret, of
  "<timestamp>.<body>" (the raw body bytes). A receiver recomputes it, compares in constant
  time, and rejects old timestamps (replays).
- `X-Notify-Notification-Id`: the notification's id. Delivery is at-least-once, so a receiver
  may see a notification twice; this is its idempotency key.

Options:
- `secret` (required): the HMAC key.
- `targets`: a table key -> URL; a notification's `to` is a key.
- `allow_any_url` (default false): `to` may also be an http(s) URL itself.
- `allow_private_targets` (default false): see below.
- `timeout` (seconds, default 10): the send's deadline, everything included (the channel's
  `send_timeout`).

Server-side request forgery: unless `allow_private_targets`, a target must not be a loopback,
private, link-local, multicast, reserved or unspecified address (IPv4 or IPv6, IPv4-mapped and
other IPv4-embedding IPv6 forms included). The host is resolved once per connection, every
address it resolves to is checked, and the socket connects to a checked address (TLS still
verifies the original host name, and the Host header is the original). So a name that resolves
to a private address, or a second look-up that answers differently (DNS rebinding), cannot
reach inside. Redirects are not followed and environment proxies are ignored. A refused target
is a permanent failure.

Outcomes: the status decides. 2xx sent (the provider message id is the answer's JSON "id",
else its X-Request-Id header, else ""; a 2xx whose body cannot be read is sent too); 408, 429
and 5xx transient (Retry-After honoured, seconds or HTTP-date);
other statuses permanent; connection errors and timeouts transient.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from ..base import Channel, Message
from ..errors import (
    ChannelConfigurationError,
    ChannelError,
    InvalidMessage,
    PermanentChannelError,
    TransientChannelError,
)
from ..retry_after import parse_retry_after

SIGNATURE_HEADER = "X-Notify-Signature"
TIMESTAMP_HEADER = "X-Notify-Timestamp"
NOTIFICATION_ID_HEADER = "X-Notify-Notification-Id"
EVENT_ID_HEADER = "X-Notify-Event-Id"
URL_MAX = 2048
RESPONSE_READ_MAX = 64 * 1024  # of the answer's body, for its "id"; the rest is not read
USER_AGENT = "notify-webhook/1"


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The X-Notify-Signature value for a body sent at `timestamp` (what a receiver recomputes)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookChannel(Channel):
    kind = "webhook"
    accepted_on_http_2xx = True

    def __init__(
        self,
        name: str,
        *,
        secret: str,
        targets: Mapping[str, str] | None = None,
        allow_any_url: bool = False,
        allow_private_targets: bool = False,
        timeout: float = 10.0,
    ):
        super().__init__(name, timeout=timeout)
        if not isinstance(secret, str) or not secret:
            raise ChannelConfigurationError(f"channel {name!r}: secret must be a non-empty string")
        targets = dict(targets or {})
        if not targets and not allow_any_url:
            raise ChannelConfigurationError(f"channel {name!r}: no targets, and allow_any_url is false: nothing could be sent")
        self._secret = secret.encode()
        self.allow_any_url = bool(allow_any_url)
        self.allow_private_targets = bool(allow_private_targets)
        for key, url in targets.items():
            problem = url_problem(url, allow_private=self.allow_private_targets) if isinstance(url, str) else "not a string"
            if problem:
                raise ChannelConfigurationError(f"channel {name!r}: target {key!r}: {problem}")
        self.targets = targets

    # --- intake ------------------------------------------------------------------------------

    def validate(self, message: Message) -> Message:
        if message.recipient in self.targets:
            return message
        if self.allow_any_url and message.recipient.lower().startswith(("http://", "https://")):
            problem = url_problem(message.recipient, allow_private=self.allow_private_targets)
            if problem:
                raise InvalidMessage("to", problem)
            return message
        known = ", ".join(sorted(self.targets)) or "none"
        also = " or an http(s) URL" if self.allow_any_url else ""
        raise InvalidMessage("to", f"not a target of channel {self.name!r}: expected one of {known}{also}")

    # --- sending -----------------------------------------------------------------------------

    def send(self, message: Message) -> str:
        url = self._url_for(message.recipient)
        body = json.dumps(
            {
                "id": message.notification_id,
                "to": message.recipient,
                "subject": message.subject,
                "message": message.body,
                "metadata": message.metadata,
                "attempt": message.attempt,
                "sent_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        return self._post(url, body, secret=self._secret, headers={NOTIFICATION_ID_HEADER: message.notification_id})

    def _post(self, url: str, body: bytes, *, secret: bytes, headers: Mapping[str, str]) -> str:
        """POST `body` to `url`, signed with `secret`; the receiver's id, or a channel error."""
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            **headers,
        }
        # A session per send: nothing shared between dispatcher threads, and every send
        # resolves and checks the target afresh.
        with self._session() as session:
            try:
                with session.post(
                    url, data=body, headers=headers, timeout=self.send_timeout,
                    allow_redirects=False, stream=True,
                ) as response:
                    content = _read_start(response)
            except Exception as exc:
                error = self._classify_exception(exc, url)
                if error is None:
                    raise
                raise error from exc
        return self._outcome(response, content)

    def _url_for(self, recipient: str) -> str:
        """The URL to post to. The channel's options may have changed since intake."""
        if recipient in self.targets:
            return self.targets[recipient]
        if not self.allow_any_url:
            raise PermanentChannelError(f"{recipient!r} is not a target of this channel", channel=self.name)
        problem = url_problem(recipient, allow_private=self.allow_private_targets)
        if problem:
            raise PermanentChannelError(f"refused target: {problem}", channel=self.name)
        return recipient

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxies from the environment: we connect to what we checked
        adapter = CheckedAddressAdapter(allow_private=self.allow_private_targets)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    # --- outcomes: every answer mapped in one place -------------------------------------------

    def _outcome(self, response: requests.Response, content: bytes) -> str:
        """The receiver's answer: its id when accepted, else a Transient or Permanent error."""
        status = response.status_code
        if 200 <= status < 300:
            return _provider_id(response, content)
        detail = f"webhook answered HTTP {status} {response.reason or ''}".rstrip()
        text = content[:200].decode("utf-8", "replace").strip()
        if text:
            detail += f": {text}"
        # 408 Request Timeout, 429 Too Many Requests and 5xx (500, 502 Bad Gateway, 503 Service
        # Unavailable, 504 Gateway Timeout) may pass; Retry-After says when to come back.
        if status in (408, 429) or 500 <= status < 600:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientChannelError(detail, channel=self.name, status=status, retry_after=retry_after)
        # Any other 4xx (400 bad request, 401/403 a rejected signature, 404, 410 gone), and a
        # 3xx, which is not followed (it could lead anywhere), will not change on a retry.
        raise PermanentChannelError(detail, channel=self.name, status=status)

    def _classify_exception(self, exc: Exception, url: str) -> ChannelError | None:
        host = urlsplit(url).hostname
        if isinstance(exc, RefusedTarget):
            return PermanentChannelError(f"refused target {host}: {exc} (allow_private_targets is false)", channel=self.name)
        if isinstance(exc, requests.Timeout):
            return TransientChannelError(f"webhook {host} did not answer within {self.send_timeout:g}s", channel=self.name)
        if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)):
            return PermanentChannelError(f"webhook URL is not usable: {exc}", channel=self.name)
        if isinstance(exc, (requests.RequestException, OSError)):  # refused, reset, dropped, TLS
            return TransientChannelError(f"cannot reach webhook {host}: {_reason(exc)}", channel=self.name)
        return None

    def describe(self) -> dict[str, Any]:
        # The URLs are not shown: incoming-webhook URLs often carry a token.
        return {
            **super().describe(),
            "limits": {},
            "targets": sorted(self.targets),
            "allow_any_url": self.allow_any_url,
        }


def _read_start(response: requests.Response) -> bytes:
    """The first RESPONSE_READ_MAX bytes of the answer's body. The status has been received,
    and it alone decides the outcome: a body cut short reads as empty."""
    content = b""
    try:
        for chunk in response.iter_content(8192):
            content += chunk
            if len(content) >= RESPONSE_READ_MAX:
                break
    except (requests.RequestException, OSError):
        return b""
    return content[:RESPONSE_READ_MAX]


def _provider_id(response: requests.Response, content: bytes) -> str:
    try:
        data = json.loads(content) if content else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("id"), (str, int)) and not isinstance(data.get("id"), bool):
        return str(data["id"])
    return response.headers.get("X-Request-Id") or ""


def _reason(exc: Exception) -> str:
    """What happened (refused, reset, ...), without requests' "Max retries exceeded" wrapping."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], Exception) else exc
    return str(getattr(inner, "reason", None) or inner)


# --- addresses ----------------------------------------------------------------------------------


class StatusWebhookChannel(WebhookChannel):
    """Delivers the status events of the API clients to their webhook endpoints
    (notifications.models.WebhookEndpoint), as the notifications of an internal client.

    The message is the event's JSON, posted as it is; `to` is the endpoint's URL; the
    metadata carries the event id (header X-Notify-Event-Id, for the receiver's
    de-duplication) and the endpoint's signing secret (X-Notify-Signature, as above). The
    registry configures it as the channel `status-webhooks` unless the channels file does;
    its one option besides `timeout` is `allow_private_targets` (default: the environment's
    NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS). No API request may use it: the intake refuses it.
    """

    kind = "status-webhook"

    def __init__(self, name: str, *, allow_private_targets: bool = False, timeout: float = 10.0):
        Channel.__init__(self, name, timeout=timeout)
        self._secret = b""
        self.allow_any_url = True
        self.allow_private_targets = bool(allow_private_targets)
        self.targets = {}

    def validate(self, message: Message) -> Message:
        raise InvalidMessage("channel", f"channel {self.name!r} delivers status events to webhook endpoints; "
                                        f"register one with POST /api/v1/webhook-endpoints")

    def send(self, message: Message) -> str:
        secret = message.metadata.get("signing_secret")
        event_id = message.metadata.get("event_id")
        if not isinstance(secret, str) or not secret or not isinstance(event_id, str):
            raise PermanentChannelError("a status event without its endpoint's secret or event id", channel=self.name)
        url = self._url_for(message.recipient)
        return self._post(url, message.body.encode(), secret=secret.encode(), headers={EVENT_ID_HEADER: event_id})

    def describe(self) -> dict[str, Any]:
        return {**Channel.describe(self), "limits": {}, "allow_private_targets": self.allow_private_targets}


class RefusedTarget(Exception):
    """A target address that the channel may not connect to. Deliberately not an OSError,
    so that neither urllib3 nor requests retries or rewraps it."""


# IPv6 prefixes that embed an IPv4 address, which is what the packet finally reaches.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix


def address_problem(address: str) -> str | None:
    """Why an IP address may not be a webhook target, or None if it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            problem = address_problem(str(embedded))
            return f"{problem} (embedded in {ip})" if problem else None
    for label, flag in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a reserved", ip.is_reserved),
        ("a private", ip.is_private),
    ):
        if flag:
            return f"{ip} is {label} address"
    if not ip.is_global:  # e.g. 100.64.0.0/10, shared address space (carrier-grade NAT)
        return f"{ip} is not a public address"
    return None


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """What is wrong with a target URL, judged without DNS (a literal IP address is checked;
    a host name is checked when a send resolves it)."""
    if len(url) > URL_MAX:
        return f"URL longer than {URL_MAX} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "a URL may not carry user:password@"
    if any(ch.isspace() for ch in url):
        return "a URL may not contain whitespace"
    if not allow_private:
        try:
            problem = address_problem(parts.hostname)
        except ValueError:  # a host name, not an address
            name = parts.hostname.rstrip(".").lower()
            problem = f"{name} is a loopback name" if name == "localhost" or name.endswith(".localhost") else None
        if problem:
            return f"{problem}; not allowed as a target"
    return None


class _CheckedAddressConnectionMixin:
    """A urllib3 connection that resolves its host once, refuses the whole host if any of its
    addresses is not public (unless `allow_private`), and connects to a resolved address, so
    that no second look-up can answer differently. `self.host` (the name) still gives the Host
    header and, for HTTPS, the TLS server name and the certificate check."""

    allow_private: bool = False

    def _new_conn(self) -> socket.socket:
        host, port = self._dns_host, self.port
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not self.allow_private:
            for address in addresses:
                problem = address_problem(address)
                if problem:
                    raise RefusedTarget(problem if address == host else f"{host} resolves to a refused address: {problem}")
        error: Exception | None = None
        for address in addresses:
            try:
                # A literal address: create_connection looks nothing up.
                sock = urllib3_connection.create_connection(
                    (address, port), self.timeout, source_address=self.source_address, socket_options=self.socket_options,
                )
            except socket.timeout as exc:
                error = ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})")
                error.__cause__ = exc
                continue
            except OSError as exc:
                error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")
                error.__cause__ = exc
                continue
            if not self.allow_private:
                # The socket's peer is the address checked above; checked again, cheaply, so
                # that this stays true whatever create_connection does.
                problem = address_problem(sock.getpeername()[0])
                if problem:
                    sock.close()
                    raise RefusedTarget(f"connected to {problem}")
            return sock
        assert error is not None  # getaddrinfo returns at least one address or raises
        raise error


def _pool_classes(allow_private: bool) -> dict[str, type]:
    attrs = {"allow_private": allow_private}
    http = type("CheckedHTTPConnection", (_CheckedAddressConnectionMixin, HTTPConnection), attrs)
    https = type("CheckedHTTPSConnection", (_CheckedAddressConnectionMixin, HTTPSConnection), attrs)
    return {
        "http": type("CheckedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("CheckedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
    }


_POOL_CLASSES = {allow: _pool_classes(allow) for allow in (False, True)}


class CheckedAddressAdapter(HTTPAdapter):
    """A requests adapter whose connections resolve once and connect to a checked address:
    only public ones unless `allow_private` (see the module docstring)."""

    def __init__(self, *, allow_private: bool = False, **kwargs):
        self.allow_private = allow_private  # before super().__init__, which builds the pools
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES[self.allow_private]

    def proxy_manager_for(self, proxy, **proxy_kwargs):  # pragma: no cover - proxies are never configured
        raise RefusedTarget("proxies are not supported for webhooks")
