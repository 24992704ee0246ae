"""Channel backends for dispatcher tests, configured through a channels file like any other."""

from channels.base import Channel, Message


class ExplodingChannel(Channel):
    """A buggy backend: its first attempts raise an unexpected exception (not a ChannelError)."""

    kind = "test"
    send_timeout = 1.0

    def __init__(self, name: str, *, explode_attempts: int = 1):
        super().__init__(name)
        self.explode_attempts = explode_attempts

    def send(self, message: Message) -> str:
        if message.attempt <= self.explode_attempts:
            raise KeyError("bug in channel code")
        return "exploding-ok"
