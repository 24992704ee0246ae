"""The channel backend that dispatchers use to reach the chaos provider (chaos.provider).

    [channels.chaos]
    backend = "chaos.provider_channel.ChaosProviderChannel"
    options = { base_url = "http://127.0.0.1:8765", timeout = 1.5 }

`send()` POSTs `{"id": notification id, "attempt": n, "pid": this process}` to `<base_url>/send` and maps the answer
the way a real provider backend does (compare channels.backends.webhook): the status decides.
2xx -> sent, with the provider's message id if its body gives one; 408, 429, 5xx, timeouts and
connection errors -> TransientChannelError (with the provider's Retry-After); other 4xx ->
PermanentChannelError. The deadline, the cap on the answer's size and the cleaning of what the
provider said are Channel.deliver's, as for every channel.
"""

from __future__ import annotations

import http.client
import json
import os
from typing import Any
from urllib.parse import urlsplit

from channels.base import Channel, Message
from channels.errors import ChannelConfigurationError, PermanentChannelError, TransientChannelError
from channels.retry_after import parse_retry_after

from .provider import is_test_address


class ChaosProviderChannel(Channel):
    kind = "chaos"
    accepted_on_http_2xx = True  # the provider's status decides, as for a webhook

    def __init__(self, name: str, *, base_url: str, timeout: float = 1.5):
        super().__init__(name, timeout=timeout)
        parts = urlsplit(base_url)
        # The chaos and cluster runs talk to a provider on this machine only (loopback, or a
        # test host on the cluster run's private bridge).
        if parts.scheme != "http" or not is_test_address(parts.hostname) or parts.port is None:
            raise ChannelConfigurationError(
                f"channel {name!r}: base_url must be http://ADDRESS:PORT on loopback or a private address, "
                f"got {base_url!r}"
            )
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path.rstrip("/") + "/send"

    def send(self, message: Message) -> str:
        # The whole exchange is bounded by Channel.deliver (send_timeout, and a cap on what is
        # read); this is only the provider call and the reading of its answer.
        # The sender's pid lets the checks tell which dispatcher process sent what, and when.
        body = json.dumps({"id": message.notification_id, "attempt": message.attempt, "pid": os.getpid()}).encode()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.send_timeout)
        try:
            # Refused, reset, no answer in time, an answer too large or cut off: network
            # errors, which Channel.deliver judges (with the HTTP status, if one came).
            connection.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            content = response.read()  # whole, as an SDK reads it: Channel.deliver caps it
        finally:
            connection.close()
        return self._outcome(response, content)

    def _outcome(self, response: http.client.HTTPResponse, content: bytes) -> str:
        """The provider's status decides; a 2xx body that is not {"id": ...} gives no id."""
        status = response.status
        if 200 <= status < 300:
            try:
                return str(json.loads(content)["id"])
            except (ValueError, KeyError, TypeError):
                return ""
        detail = f"provider answered HTTP {status}"
        text = content[:200].decode("utf-8", "replace").strip()
        if text:
            detail += f": {text}"
        if status in (408, 429) or 500 <= status < 600:
            retry_after = parse_retry_after(response.getheader("Retry-After"))
            raise TransientChannelError(detail, channel=self.name, status=status, retry_after=retry_after)
        raise PermanentChannelError(detail, channel=self.name, status=status)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "limits": {}}
