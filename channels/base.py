"""The channel interface: validate a message at intake, deliver it from a dispatcher.

A channel knows nothing of the API, the database or the outbox. It receives a `Message`,
and either returns the provider's message id or raises one of `channels.errors`.

The base class owns the send flow, as django-anymail's base backend does; a backend writes
only the provider call (`send`) and the table that maps its provider's answers to errors.
`deliver`, which dispatchers call, wraps that call:
- one deadline for the whole send, `send_timeout` seconds (DNS, connect, TLS, every read and
  the whole answer included), past which the call is abandoned and cut off, and a cap on the
  bytes it may read (channels.deadline);
- everything the provider said (ids, error texts, status codes, Retry-After) made safe text
  (channels.provider_text) before it leaves the channel, for the database and the logs;
- an exception that is not a ChannelError classified: a network failure is transient, any
  other is permanent (the same message would raise it again), except that an answer the
  provider gave with HTTP 2xx means, for a channel that says so, that the message was taken.
"""

from __future__ import annotations

import http.client
import logging
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from .deadline import DeadlineExceeded, ProviderCall
from .errors import (
    ChannelConfigurationError,
    ChannelError,
    PermanentChannelError,
    RecipientRefusedError,
    TransientChannelError,
)
from .policy import ChannelPolicy
from .provider_text import ERROR_MAX, ID_MAX, clean, clean_seconds, clean_status

try:  # under requests; not every channel needs it
    from urllib3.exceptions import HTTPError as Urllib3Error
    from urllib3.exceptions import TimeoutError as Urllib3Timeout
except ImportError:  # pragma: no cover
    Urllib3Error = Urllib3Timeout = OSError

logger = logging.getLogger("channels")

DEFAULT_TIMEOUT = 10.0
# What a send may read of its provider's answers, headers and bodies together. Providers answer
# a send in a few kilobytes; ten megabytes, or a body that never ends, is not an answer.
ANSWER_LIMIT = 1024 * 1024
# The failures of the network and of the protocols on it: worth another try later.
NETWORK_ERRORS = (OSError, http.client.HTTPException, Urllib3Error)  # OSError: sockets, TLS, requests, smtplib
TIMEOUTS = (TimeoutError, Urllib3Timeout)  # TimeoutError: socket.timeout; requests wraps urllib3's


@dataclass(frozen=True)
class Message:
    """What a channel sends: the recipient, the text, and the notification it belongs to."""

    recipient: str
    body: str
    subject: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    html: str = ""  # an HTML alternative of the body, for channels that send one (email)
    notification_id: str = ""
    attempt: int = 1

    def with_recipient(self, recipient: str) -> "Message":
        return replace(self, recipient=recipient)


class Channel(ABC):
    """Base class of every channel backend.

    A backend is configured in NOTIFICATION_CHANNELS under a name, with options passed to
    `__init__` as keyword arguments (`timeout`, the send deadline in seconds, is one every
    channel takes). Subclasses set `kind` (what it reaches: email, sms, ...), override
    `validate` to check and normalise a message at intake, and implement `send`, the provider
    call. Sends run on many threads at once, so `send` must be thread-safe.
    """

    kind: ClassVar[str] = "generic"
    # The fleet's rate budgets, circuit breaker and fallbacks for it (channels.policy); the
    # registry sets it from the channels file.
    policy: ChannelPolicy = ChannelPolicy()
    # A channel whose send never leaves this process (log, fake) cannot hang on a provider:
    # it runs on the caller's thread, without a deadline thread.
    sends_in_process: ClassVar[bool] = False
    # Whether an HTTP 2xx answer means the provider has taken the message, whatever its body
    # says. Then a send whose 2xx answer cannot be read (invalid, too large, cut off) counts as
    # sent, without a provider id: sending again would deliver it twice. Slack, which answers
    # failures with HTTP 200 too, leaves it False.
    accepted_on_http_2xx: ClassVar[bool] = False
    # Where the provider posts its delivery receipts, below the service's root, or None if
    # the channel takes none (channels.receipts). `{name}` is the channel's name.
    receipts_path: ClassVar[str | None] = None

    def __init__(self, name: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ChannelConfigurationError(f"channel {name!r}: timeout must be a positive number of seconds, at most 3600")
        self.name = name
        self.options = options  # what the backend chose to record of its options (never secrets)
        # The longest a send takes: `deliver` gives up on it then. A dispatcher starts a send
        # only while this much of its lease remains.
        self.send_timeout = float(timeout)

    def validate(self, message: Message) -> Message:
        """Check a message at intake; return it, possibly normalised (e.g. a phone number in
        E.164). Raise `InvalidMessage` naming the field that this channel cannot send."""
        return message

    @abstractmethod
    def send(self, message: Message) -> str | None:
        """The provider call: send the message, return the provider's message id (or None if
        it gives none). Raise `TransientChannelError` or `PermanentChannelError` for the
        provider's refusals; anything else raised is classified by `deliver`."""

    def deliver(self, message: Message) -> str:
        """Send `message` within `send_timeout`; the provider's id as safe text.

        Raises only TransientChannelError or PermanentChannelError, with safe text, whatever
        the provider or the backend did.
        """
        call = None
        try:
            if self.sends_in_process:
                provider_id = self.send(message)
            else:
                call = ProviderCall(timeout=self.send_timeout, answer_limit=ANSWER_LIMIT)
                provider_id = call.run(self.send, message)
        except ChannelError as exc:
            raise self._safe_error(exc) from None
        except DeadlineExceeded as exc:
            if self._taken(call):
                return self._accepted_unread(call, exc)
            raise TransientChannelError(clean(exc, limit=ERROR_MAX), channel=self.name) from None
        except Exception as exc:  # noqa: BLE001 - classified here, by design
            if self._taken(call):
                return self._accepted_unread(call, exc)
            raise self._unexpected(exc) from None
        return clean(provider_id, limit=ID_MAX, mark_cut=False)

    def receipts_route(self) -> str | None:
        """The path, below the service's root, to give the provider for its receipts."""
        return self.receipts_path.format(name=self.name) if self.receipts_path else None

    def describe(self) -> dict[str, Any]:
        """What `GET /api/v1/channels` shows of this channel (never its secrets)."""
        return {"name": self.name, "kind": self.kind, "backend": f"{type(self).__module__}.{type(self).__qualname__}",
                "send_timeout": self.send_timeout, **self.policy.describe()}

    # --- the send flow's parts ----------------------------------------------------------------

    def _safe_error(self, exc: ChannelError) -> ChannelError:
        """The backend's error, of the same kind, with the provider's words made safe."""
        text = clean(exc.args[0] if exc.args else type(exc).__name__, limit=ERROR_MAX)
        status = clean_status(exc.status)
        if isinstance(exc, PermanentChannelError):
            kind = RecipientRefusedError if isinstance(exc, RecipientRefusedError) else PermanentChannelError
            return kind(text, channel=self.name, status=status)
        retry_after = clean_seconds(getattr(exc, "retry_after", None))
        return TransientChannelError(text, channel=self.name, status=status, retry_after=retry_after)

    def _taken(self, call: ProviderCall | None) -> bool:
        status = call.last_http_status if call is not None else None
        return self.accepted_on_http_2xx and status is not None and 200 <= status < 300

    def _accepted_unread(self, call: ProviderCall, exc: BaseException) -> str:
        logger.warning("channel %s: the provider took the message (HTTP %s) but its answer could not be read "
                       "(%s); counted as sent, without a provider id",
                       self.name, call.last_http_status, clean(f"{type(exc).__name__}: {exc}", limit=ERROR_MAX))
        return ""

    def _unexpected(self, exc: Exception) -> ChannelError:
        described = clean(f"{type(exc).__name__}: {exc}", limit=ERROR_MAX)
        if _timed_out(exc):
            return TransientChannelError(f"the provider did not answer within {self.send_timeout:g}s ({described})",
                                         channel=self.name)
        if isinstance(exc, NETWORK_ERRORS):
            return TransientChannelError(f"cannot reach the provider: {described}", channel=self.name)
        # A bug, or an answer the backend does not understand: the same message would fail
        # the same way again, so retrying it for hours would only delay the failure.
        trace = "".join(traceback.format_exception(exc))
        logger.error("channel %s: unexpected error in send: %s\n%s", self.name, described,
                     "\n".join(clean(line, limit=ERROR_MAX) for line in trace.splitlines()[-40:]))
        return PermanentChannelError(f"unexpected {described}", channel=self.name)


def _timed_out(exc: BaseException) -> bool:
    """Whether a timeout is behind `exc`: itself, or what it wraps (requests and urllib3 wrap
    a socket timeout once or twice, as a cause or as their first argument)."""
    for _ in range(8):
        if isinstance(exc, TIMEOUTS):
            return True
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        exc = exc.__cause__ or inner or exc.__context__
        if exc is None:
            return False
    return False
