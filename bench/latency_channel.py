"""A channel for the latency benchmark: records when each send call starts.

Each send appends "<notification id> <time.time()>" to the file named by its `path` option,
with one os.write on an O_APPEND descriptor per line, so that the lines of several threads and
of several dispatcher processes never interleave. The file is opened at the first send, in
the process that sends: API workers build every configured channel but never send, and
dispatcher processes are forked after the channels are built.
"""

from __future__ import annotations

import os
import threading
import time

from channels.base import Channel, Message


class LatencyChannel(Channel):
    kind = "fake"
    send_timeout = 1.0

    def __init__(self, name: str, *, path: str):
        super().__init__(name)
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None

    def send(self, message: Message) -> str:
        sent_at = time.time()  # first thing: the latency ends when the send call begins
        line = f"{message.notification_id} {sent_at:.6f}\n".encode()
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._pid = os.getpid()
            os.write(self._fd, line)
        return f"latency-{message.notification_id}"
