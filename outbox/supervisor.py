"""Run N worker processes and keep N running, as gunicorn's arbiter does.

A worker that dies (crash, SIGKILL, out of memory) is replaced within about a second; one that
keeps dying young is restarted with a growing delay instead of in a tight loop. SIGTERM or
SIGINT to the supervisor forwards SIGTERM to every worker, waits for them to finish their
in-flight work, and exits 0; a second signal kills them at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

from django.db import connections

logger = logging.getLogger("outbox.supervisor")


class Supervisor:
    """Forks `processes` children, each running `target()` and exiting with its return code."""

    def __init__(self, *, processes: int, target: Callable[[], int], graceful_timeout: float = 60.0):
        self.processes = processes
        self.target = target
        self.graceful_timeout = graceful_timeout
        self.children: dict[int, float] = {}  # pid -> start time
        self._stopping = False
        self._kill_now = False
        self._wakeup = threading.Event()
        self._restart_delay = 0.0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._handle_stop)
        signal.signal(signal.SIGINT, self._handle_stop)
        signal.signal(signal.SIGCHLD, lambda *_: self._wakeup.set())
        logger.info("supervisor %d starting %d dispatcher processes", os.getpid(), self.processes)
        while not self._stopping:
            self._reap()
            while len(self.children) < self.processes and not self._stopping:
                self._spawn()
            self._wakeup.wait(1.0)
            self._wakeup.clear()
        return self._shutdown()

    def _handle_stop(self, signum, frame) -> None:
        if self._stopping:
            self._kill_now = True
        self._stopping = True
        self._wakeup.set()

    def _spawn(self) -> None:
        if self._restart_delay:
            time.sleep(self._restart_delay)
        connections.close_all()  # never share a database connection with a child
        pid = os.fork()
        if pid == 0:
            self._run_child()
        self.children[pid] = time.monotonic()
        logger.info("started dispatcher process %d", pid)

    def _run_child(self) -> None:
        code = 1
        try:
            # The supervisor forwards SIGTERM on Ctrl-C; the terminal's SIGINT to the whole
            # process group would otherwise count as a second, hard stop.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = self.target()
        except BaseException:
            logger.exception("dispatcher process %d crashed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            started = self.children.pop(pid, None)
            if started is None:
                continue
            lived = time.monotonic() - started
            if not self._stopping:
                logger.warning("dispatcher process %d exited (%s) after %.0fs; replacing it", pid, _describe_status(status), lived)
            # A worker that dies young makes the next start wait longer (up to 30 s).
            self._restart_delay = min(30.0, max(1.0, self._restart_delay * 2)) if lived < 5 else 0.0

    def _shutdown(self) -> int:
        logger.info("supervisor stopping %d dispatcher processes", len(self.children))
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.graceful_timeout
        while self.children and time.monotonic() < deadline and not self._kill_now:
            self._reap()
            self._wakeup.wait(0.2)
            self._wakeup.clear()
        for pid in list(self.children):
            logger.warning("dispatcher process %d did not stop in time; killing it", pid)
            _signal(pid, signal.SIGKILL)
        while self.children:
            self._reap()
            time.sleep(0.05)
        logger.info("supervisor stopped")
        return 0


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
