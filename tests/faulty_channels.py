"""Channel backends for dispatcher tests, configured through a channels file like any other."""

from channels.base import Channel, Message
from channels.errors import TransientChannelError


class ExplodingChannel(Channel):
    """A buggy backend: its first attempts raise an unexpected exception (not a ChannelError)."""

    kind = "test"

    def __init__(self, name: str, *, explode_attempts: int = 1):
        super().__init__(name, timeout=1.0)
        self.explode_attempts = explode_attempts

    def send(self, message: Message) -> str:
        if message.attempt <= self.explode_attempts:
            raise KeyError("bug in channel code")
        return "exploding-ok"


class LeakyChannel(Channel):
    """A backend whose provider library puts credentials in its errors: attempt 1 raises the
    library's connection error quoting the request's Authorization header, attempt 2 a
    transient error quoting the token; then it succeeds. A message with metadata "bug" makes
    it raise an unexpected exception quoting the token (a permanent failure, logged with its
    traceback). The logs must show the token nowhere (test_logging)."""

    kind = "test"

    def __init__(self, name: str, *, api_token: str):
        super().__init__(name, timeout=1.0)
        self.api_token = api_token

    def send(self, message: Message) -> str:
        if message.metadata.get("bug"):
            raise RuntimeError(f"cannot parse the answer to a request with api_token={self.api_token}")
        if message.attempt == 1:
            raise ConnectionError(f"HTTP 500 for POST with headers {{'Authorization': 'Bearer {self.api_token}'}}")
        if message.attempt == 2:
            raise TransientChannelError(f"provider rejected token={self.api_token}: try again")
        return "leaky-ok"
