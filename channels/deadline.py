"""One deadline for a whole provider call, and a cap on what it reads.

Socket timeouts bound each wait, not their sum: a provider that sends its status line and then
one header line every two seconds never trips a three-second read timeout; a name look-up has
no timeout of ours at all; each address a name resolves to gets a full connect timeout; an
SMTP exchange is a dozen waits. So `ProviderCall.run` runs the call on a thread of its own and
waits for it only until the deadline; then it gives up, and the caller's thread is free.

The abandoned call is cut off, so that its thread ends soon too:
- every socket it opened is shut down, which ends a blocked read or write at once;
- from then on it can create, resolve or connect no socket (each attempt raises CallCutOff).
A look-up already inside getaddrinfo() cannot be interrupted: that thread ends when the
resolver gives up, its caller long gone. While MAX_LINGERING abandoned calls are still running
in the process, no call starts: the send fails at once, as if it had timed out.

Both rest on an audit hook (PEP 578: the interpreter reports socket and http.client events to
it, on the thread that causes them), which acts only on threads that run a ProviderCall. It
also, before the deadline, shortens a connect's timeout to the time left, and puts every HTTP
answer read through http.client (underneath requests, urllib3 and urllib, so under every SDK
here) and every SMTP reply read by smtplib behind a byte budget: at most `answer_limit` bytes
per call, past which reading fails with AnswerTooLarge. The status of the last HTTP answer whose
headers were read in time is kept (`last_http_status`): a channel can tell "the provider took
it, but its answer was unreadable" from "no answer".
"""

from __future__ import annotations

import functools
import http.client
import io
import queue
import smtplib
import socket
import sys
import threading
import time
from typing import Any, Callable, TypeVar

__all__ = ["ProviderCall", "DeadlineExceeded", "CallCutOff", "AnswerTooLarge"]

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call did not return by its deadline; it was abandoned (its outcome is unknown)."""


class CallCutOff(OSError):
    """Raised inside an abandoned call at its next socket operation. An OSError, so that the
    libraries under it unwind as from any network failure."""


class AnswerTooLarge(OSError):
    """A provider call read more than its answer budget."""


class ProviderCall:
    """One provider call under a deadline of `timeout` seconds from now (see the module docstring)."""

    def __init__(self, *, timeout: float, answer_limit: int):
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.answer_budget = answer_limit
        self.last_http_status: int | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._finished = False
        self._abandoned = False
        self._sockets: list[socket.socket] = []
        self._result: Any = None
        self._error: BaseException | None = None

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a call thread: its value or its exception, or DeadlineExceeded."""
        _install_audit_hook()
        lingering = _lingering.count
        if lingering >= MAX_LINGERING:
            # Calls stuck where they cannot be cut off (a name look-up that hangs): starting
            # more would only add threads. The send fails as if it had timed out.
            raise DeadlineExceeded(f"not started: {lingering} abandoned provider calls are still running")
        _call_threads.submit(self, fn, args)
        if not self._done.wait(max(0.0, self.deadline - time.monotonic())) and self._abandon():
            raise DeadlineExceeded(f"the provider did not answer within {self.timeout:g}s: the send was abandoned at its deadline")
        error, self._error = self._error, None  # no reference cycle through the traceback
        if error is not None:
            raise error
        return self._result

    # --- on the call's thread ---------------------------------------------------------------------

    def _execute(self, fn: Callable[..., Any], args: tuple) -> None:
        _local.call = self
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, whatever it is
            result, error = None, exc
        finally:
            _local.call = None
        with self._lock:
            self._finished = True
            self._sockets.clear()
            if self._abandoned:
                _lingering.add(-1)
                return  # nobody waits for it any more
            self._result, self._error = result, error
        self._done.set()

    def _adopt(self, sock: socket.socket) -> None:
        with self._lock:
            if self._abandoned:
                raise CallCutOff("the send was abandoned at its deadline")
            self._sockets.append(sock)

    def _time_left(self) -> float:
        """Seconds to the deadline; raises CallCutOff once the call is abandoned or late."""
        left = self.deadline - time.monotonic()
        if self._abandoned or left <= 0:
            raise CallCutOff("the send's deadline has passed")
        return left

    def _read(self, size: int) -> int:
        """How much a read may ask for: the budget left, plus one byte to notice an overrun."""
        if self.answer_budget < 0:
            raise AnswerTooLarge("the provider's answer exceeded its size limit")
        return self.answer_budget + 1 if size is None or size < 0 else min(size, self.answer_budget + 1)

    def _note_status(self, status: int) -> None:
        with self._lock:
            # An abandoned call's sockets are shut down, and http.client reads the end of the
            # stream as the end of the headers: what it "completes" then is no answer.
            if not self._abandoned:
                self.last_http_status = status

    def _count(self, nbytes: int) -> None:
        self.answer_budget -= nbytes
        if self.answer_budget < 0:
            raise AnswerTooLarge("the provider's answer exceeded its size limit")

    # --- on the caller's thread -------------------------------------------------------------------

    def _abandon(self) -> bool:
        """Give up on the call and cut it off; False if it finished meanwhile (then use that)."""
        with self._lock:
            if self._finished:
                return False
            self._abandoned = True
            _lingering.add(1)
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                # The raw shutdown, also for an SSLSocket: it wakes a thread blocked reading.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # not connected yet, or closed already
        return True


class _Count:
    """A counter shared by threads."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n


# Abandoned calls still running in this process, and the most there may be before no more
# calls start.
_lingering = _Count()
MAX_LINGERING = 128


# --- the audit hook ------------------------------------------------------------------------------

_local = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


def _install_audit_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        with _hook_lock:
            if not _hook_installed:
                sys.addaudithook(_audit)  # for the life of the process: hooks cannot be removed
                _hook_installed = True


def _audit(event: str, args: tuple) -> None:
    call = getattr(_local, "call", None)
    if call is None:  # the common case: not a call thread
        return
    if event == "socket.__new__":
        call._adopt(args[0])
    elif event == "socket.connect":
        sock, left = args[0], call._time_left()
        timeout = sock.gettimeout()
        if timeout is None or timeout > left:
            sock.settimeout(left)
    elif event == "socket.getaddrinfo":
        call._time_left()
    elif event == "smtplib.connect":  # its replies, the greeting first, count like HTTP answers
        smtp = args[0]
        smtp.getreply = functools.partial(_budgeted_getreply, smtp, call)
    elif event == "http.client.send":
        connection = args[0]
        if connection.response_class is not _BoundedResponse:
            connection.response_class = _BoundedResponse
        if connection.sock is not None:  # the answer's waits: no longer than the time left
            timeout, left = connection.sock.gettimeout(), call._time_left()
            if timeout is None or timeout > left:
                connection.sock.settimeout(left)


def _budgeted_getreply(smtp: smtplib.SMTP, call: ProviderCall):
    """SMTP.getreply, reading through the call's budget (smtplib reads a reply's lines until
    one ends it, however many there are)."""
    if smtp.file is None and smtp.sock is not None:
        smtp.file = _BudgetedReader(smtp.sock.makefile("rb"), call)
    return type(smtp).getreply(smtp)


class _BoundedResponse(http.client.HTTPResponse):
    """An HTTP answer whose bytes count against the call's answer budget."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        call = getattr(_local, "call", None)
        if call is not None:
            self.fp = _BudgetedReader(self.fp, call)

    def begin(self) -> None:
        super().begin()
        call = getattr(_local, "call", None)
        if call is not None:
            call._note_status(self.status)


class _BudgetedReader(io.RawIOBase):
    """The reads http.client (and urllib3 through it) makes of a socket file, counted."""

    def __init__(self, raw: io.BufferedReader, call: ProviderCall):
        super().__init__()
        self._raw, self._call = raw, call

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(self._call._read(size))
        self._call._count(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data = self._raw.read1(self._call._read(size))
        self._call._count(len(data))
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        n = self._raw.readinto(view[: self._call._read(len(view))])
        self._call._count(n or 0)
        return n

    def readline(self, size: int | None = -1) -> bytes:
        data = self._raw.readline(self._call._read(-1 if size is None else size))
        self._call._count(len(data))
        return data

    def peek(self, size: int = 0) -> bytes:
        return self._raw.peek(size)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()


# --- the threads that run calls ------------------------------------------------------------------


class _CallThreads:
    """Daemon threads for provider calls: an idle one takes the next call, else a new one starts.

    An abandoned call keeps its thread until it unwinds, so the number of threads follows the
    calls in progress, abandoned ones included; a thread idle for IDLE_SECONDS ends.
    """

    IDLE_SECONDS = 60.0

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # idle threads not yet promised a call

    def submit(self, call: ProviderCall, fn: Callable[..., Any], args: tuple) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # promised the call put below
        if start:
            threading.Thread(target=self._work, args=((call, fn, args),), name="provider-call", daemon=True).start()
        else:
            self._calls.put((call, fn, args))

    def _work(self, job: tuple) -> None:
        while True:
            call, fn, args = job
            call._execute(fn, args)
            with self._lock:
                self._idle += 1
            job = self._next()
            if job is None:
                return

    def _next(self) -> tuple | None:
        while True:
            try:
                return self._calls.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # not promised to anyone: this thread may end
                        self._idle -= 1
                        return None
                # Every idle thread is promised a call, so one is on its way: wait for it.


_call_threads = _CallThreads()
