"""A wake-up call that a signal handler can give as safely as a thread can.

threading.Event is not safe in a signal handler. Python runs the handler on the main thread
between two bytecodes, which may be while that thread holds the Event's lock inside
Event.wait() or Event.set(); the handler's own set() then waits for that lock, which the
thread it interrupted can never release. A supervisor hung so at its stop: its children
exited together, and a second SIGCHLD's handler waited inside the first one's set().

Wakeup keeps its state in a socket pair instead: set() writes a byte (one system call, no
lock), wait() waits for one to be readable, clear() reads them all.
"""

from __future__ import annotations

import select
import socket


class Wakeup:
    """Like threading.Event (set, clear, wait, is_set), and safe to set from a signal handler."""

    def __init__(self) -> None:
        # Sockets rather than a bare pipe: they close themselves when collected, and a closed
        # one refuses a write instead of writing to whatever file took its descriptor number.
        self._receiver, self._sender = socket.socketpair()
        self._receiver.setblocking(False)
        self._sender.setblocking(False)

    def set(self) -> None:
        try:
            self._sender.send(b"\0")
        except BlockingIOError:
            pass  # the buffer is full of wake-ups nobody has read yet: set already

    def clear(self) -> None:
        try:
            while self._receiver.recv(4096):
                pass
        except BlockingIOError:
            pass  # nothing (more) to read

    def wait(self, timeout: float | None = None) -> bool:
        """Return once set (a set since the last clear counts) or after `timeout` seconds;
        whether it is set. A signal's handler runs during the wait (PEP 475 resumes it)."""
        readable, _, _ = select.select([self._receiver], [], [], timeout)
        return bool(readable)

    def is_set(self) -> bool:
        return self.wait(0)
