"""The channel backend that dispatchers use to reach the chaos provider (chaos.provider).

    [channels.chaos]
    backend = "chaos.provider_channel.ChaosProviderChannel"
    options = { base_url = "http://127.0.0.1:8765", timeout = 1.5 }

`send()` POSTs `{"id": notification id, "attempt": n, "pid": this process}` to `<base_url>/send` and maps the answer
the way a real provider backend does (compare channels.backends.webhook):
2xx -> the provider's message id; 408, 429, 5xx, timeouts and connection errors ->
TransientChannelError (with the provider's Retry-After); other 4xx -> PermanentChannelError.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from channels.base import Channel, Message
from channels.errors import ChannelConfigurationError, PermanentChannelError, TransientChannelError
from channels.retry_after import parse_retry_after

# The chaos suite talks to a provider on this machine only.
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class ChaosProviderChannel(Channel):
    kind = "chaos"

    def __init__(self, name: str, *, base_url: str, timeout: float = 1.5):
        super().__init__(name)
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.port is None:
            raise ChannelConfigurationError(
                f"channel {name!r}: base_url must be http://127.0.0.1:PORT (loopback only), got {base_url!r}"
            )
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ChannelConfigurationError(f"channel {name!r}: timeout must be a positive number of seconds")
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path.rstrip("/") + "/send"
        self.timeout = float(timeout)
        # send() bounds the whole exchange (connect, request, answer) by `timeout`; the margin
        # covers what follows the deadline (closing, raising), so that this is a true upper
        # bound, which the dispatcher's lease check relies on.
        self.send_timeout = self.timeout + 0.1

    def send(self, message: Message) -> str:
        # The sender's pid lets the checks tell which dispatcher process sent what, and when.
        body = json.dumps({"id": message.notification_id, "attempt": message.attempt, "pid": os.getpid()}).encode()
        deadline = time.monotonic() + self.timeout
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.connect()
            # A socket timeout bounds each wait, not their sum: re-arm it with what is left.
            connection.sock.settimeout(_remaining(deadline))
            connection.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
            connection.sock.settimeout(_remaining(deadline))
            response = connection.getresponse()
            content = response.read(65536)
        except (socket.timeout, TimeoutError) as exc:
            raise TransientChannelError(f"provider did not answer within {self.timeout}s", channel=self.name) from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed without an answer
            raise TransientChannelError(f"cannot reach provider: {type(exc).__name__}: {exc}", channel=self.name) from exc
        finally:
            connection.close()
        return self._outcome(response, content)

    def _outcome(self, response: http.client.HTTPResponse, content: bytes) -> str:
        status = response.status
        if 200 <= status < 300:
            try:
                return str(json.loads(content)["id"])
            except (ValueError, KeyError, TypeError):
                return ""
        detail = f"provider answered HTTP {status}"
        if status in (408, 429) or 500 <= status < 600:
            retry_after = parse_retry_after(response.getheader("Retry-After"))
            raise TransientChannelError(detail, channel=self.name, status=status, retry_after=retry_after)
        raise PermanentChannelError(detail, channel=self.name, status=status)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "limits": {}, "timeout": self.timeout}


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("send deadline passed")
    return remaining
