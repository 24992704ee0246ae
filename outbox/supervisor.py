"""Run N worker processes and keep N running, as gunicorn's arbiter does.

A worker that dies (crash, SIGKILL, out of memory) is replaced within about a second; one that
keeps dying young is restarted with a growing delay instead of in a tight loop. SIGTERM or
SIGINT to the supervisor forwards SIGTERM to every worker, waits for them to finish their
in-flight work, and exits 0; a second signal kills them at once.

With a metrics port, the supervisor also serves its children's Prometheus metrics, added up
across them (prometheus_client's multiprocess mode, outbox/metrics.py), over HTTP at /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from typing import Callable, Iterator

from django.db import connections

from . import metrics
from .backoff import Backoff
from .wakeup import Wakeup

logger = logging.getLogger("outbox.supervisor")


class Supervisor:
    """Forks `processes` children, each running `target()` and exiting with its return code."""

    def __init__(self, *, processes: int, target: Callable[[], int], graceful_timeout: float = 60.0,
                 metrics_port: int | None = None, metrics_addr: str = "0.0.0.0"):
        self.processes = processes
        self.target = target
        self.graceful_timeout = graceful_timeout
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        self._metrics_server = None
        self._private_metrics_dir: str | None = None
        self.children: dict[int, float] = {}  # pid -> start time
        self._stopping = False
        self._kill_now = False
        self._wakeup = Wakeup()  # set by the signal handlers: no threading.Event (see outbox.wakeup)
        # A worker that dies young makes the next start wait: 1 s, doubling up to 30 s.
        self._restarts = Backoff(first=1.0, cap=30.0)
        self._restart_delay = 0.0

    def run(self) -> int:
        if self.metrics_port and self._metrics_server is None:
            self.serve_metrics()  # before the children fork, so that they write where it reads
        handlers = {signal.SIGTERM: self._handle_stop, signal.SIGINT: self._handle_stop,
                    signal.SIGCHLD: lambda *_: self._wakeup.set()}
        with signal_handlers(handlers):
            logger.info("supervisor %d starting %d dispatcher processes", os.getpid(), self.processes)
            while not self._stopping:
                self._reap()
                while len(self.children) < self.processes and not self._stopping:
                    self._spawn()
                self._wakeup.wait(1.0)
                self._wakeup.clear()
            return self._shutdown()

    def serve_metrics(self) -> None:
        """Serve the children's metrics on the metrics port. Without PROMETHEUS_MULTIPROC_DIR,
        the children write to a private directory, removed at shutdown. Raises OSError if the
        port cannot be bound."""
        from prometheus_client import start_http_server

        if not metrics.multiprocess_dir():
            self._private_metrics_dir = tempfile.mkdtemp(prefix="dispatcher-metrics-")
        metrics.use_multiprocess_dir(metrics.multiprocess_dir() or self._private_metrics_dir)
        try:
            self._metrics_server, _ = start_http_server(
                self.metrics_port, addr=self.metrics_addr, registry=metrics.multiprocess_registry()
            )
        except OSError:
            self._stop_metrics()
            raise
        logger.info("supervisor %d serving dispatcher metrics on http://%s:%d/metrics",
                    os.getpid(), self.metrics_addr, self.metrics_port)

    def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._private_metrics_dir:
            shutil.rmtree(self._private_metrics_dir, ignore_errors=True)
            self._private_metrics_dir = None

    def _handle_stop(self, signum, frame) -> None:
        if self._stopping:
            self._kill_now = True
        self._stopping = True
        self._wakeup.set()

    def _spawn(self) -> None:
        if self._restart_delay:
            time.sleep(self._restart_delay)
            if self._stopping:  # stopped while waiting: no new child to stop at once
                return
        connections.close_all()  # never share a database connection with a child
        # A SIGTERM that reaches a new child before it has its own handler must not be lost
        # (the supervisor's inherited handler would swallow it, and the stop would wait out
        # the graceful timeout): SIGTERM stays blocked across the fork, and the child
        # unblocks it once its handler is the default one (see _run_child).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = os.fork()
            if pid == 0:
                self._run_child()  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        self.children[pid] = time.monotonic()
        logger.info("started dispatcher process %d", pid)

    def _run_child(self) -> None:
        code = 1
        try:
            # The supervisor forwards SIGTERM on Ctrl-C; the terminal's SIGINT to the whole
            # process group would otherwise count as a second, hard stop.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # Until the target installs its graceful handler, a SIGTERM just ends the process
            # (it has claimed nothing yet); one sent since the fork is delivered now.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            if self._metrics_server is not None:  # the supervisor's listening socket, not ours
                self._metrics_server.socket.close()
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
            metrics.mark_process_dead(pid)
            lived = time.monotonic() - started
            if not self._stopping:
                logger.warning("dispatcher process %d exited (%s) after %.0fs; replacing it", pid, _describe_status(status), lived)
            if lived < 5:
                self._restart_delay = self._restarts.next()
            else:
                self._restarts.reset()
                self._restart_delay = 0.0

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
        self._stop_metrics()
        logger.info("supervisor stopped")
        return 0


@contextlib.contextmanager
def signal_handlers(handlers: dict[int, Callable]) -> Iterator[None]:
    """Install `handlers` (signal number -> handler) for the block; the previous ones are
    restored after it, however it ends."""
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
