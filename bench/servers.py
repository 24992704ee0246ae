"""The service's processes, started the way a deployment starts them.

gunicorn serves the API (4 workers with the project's gunicorn settings: 4 threads each,
keep-alive, as in the Dockerfile) and `manage.py run_dispatchers` delivers; both are real OS processes with the
run's environment (its database, its channels file, quiet logs, no throttle). Each runs in its own session so that stopping it never
signals the harness, and each is stopped by its own pid: SIGTERM (graceful, as in a
deployment), then SIGKILL of its process group if it does not exit in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from .config import GUNICORN_WORKERS, REPO

VENV_BIN = Path(sys.executable).parent
GUNICORN_CONFIG = REPO / "notifications_project" / "gunicorn.conf.py"


def service_env(database_url: str, channels_file: Path, **extra: str) -> dict[str, str]:
    """The environment of the service's processes in a benchmark.

    - NOTIFY_THROTTLE_RATE very high: the rate limit would otherwise be what we measure.
    - LOG_LEVEL=WARNING: a log line per delivery would be (on a 2-core machine, writing
      100,000 lines to a file is not free, and a deployment ships logs elsewhere).
    """
    env = {**os.environ, "DATABASE_URL": database_url, "NOTIFY_CHANNELS_FILE": str(channels_file),
           "NOTIFY_THROTTLE_RATE": "100000000/minute", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
           "DJANGO_SETTINGS_MODULE": "notifications_project.settings"}
    env.pop("NOTIFY_EMBEDDED_PGDATA", None)  # DATABASE_URL decides; no embedded server is started
    env.update(extra)
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the only address the benchmark sends traffic to)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    """A started service process and its log."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by this process and its live children."""
        total = 0.0
        try:
            procs = [psutil.Process(self.pid), *self.children()]
        except psutil.NoSuchProcess:
            return total
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL the process group after `timeout`."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)  # the group this harness created for it
                except ProcessLookupError:
                    pass
                return self.popen.wait(timeout=10)
        return self.popen.returncode


def _start(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    return Process(name, popen, log_path)


def start_gunicorn(env: dict[str, str], log_dir: Path, *, port: int, workers: int = GUNICORN_WORKERS,
                   timeout: float = 60.0) -> Process:
    """gunicorn as the Dockerfile runs it (its settings file, if the project has one: access
    log and metrics included; threaded workers), once /healthz answers."""
    config = ["-c", str(GUNICORN_CONFIG)] if GUNICORN_CONFIG.exists() else []
    process = _start("gunicorn", [str(VENV_BIN / "gunicorn"), *config, "notifications_project.wsgi",
                                  "--bind", f"127.0.0.1:{port}", "--workers", str(workers)], env, log_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"gunicorn exited with {process.popen.returncode}:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                # One worker answered; give the others a moment to boot too.
                if len(process.children()) >= workers:
                    return process
        except OSError:
            pass
        time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"gunicorn did not answer /healthz within {timeout}s:\n{process.log_tail()}")


def start_dispatchers(env: dict[str, str], log_dir: Path, *args: str, name: str = "dispatchers") -> Process:
    """`manage.py run_dispatchers ARGS`: a supervisor that forks the dispatcher processes."""
    return _start(name, [sys.executable, "manage.py", "run_dispatchers", *args], env, log_dir)


def manage(env: dict[str, str], *args: str) -> str:
    """Run a management command to completion; returns its standard output."""
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class RssSampler(threading.Thread):
    """Samples the resident memory of a process and its children every `interval` seconds;
    keeps each pid's peak, and the CPU time each has used (the last sample's). psutil reads
    /proc: no cost to the processes sampled."""

    def __init__(self, process: Process, interval: float = 0.1):
        super().__init__(name="rss-sampler", daemon=True)
        self.process = process
        self.interval = interval
        self.peaks: dict[int, int] = {}  # pid -> peak RSS in bytes
        self.cpu: dict[int, float] = {}  # pid -> user + system seconds so far
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                procs = [psutil.Process(self.process.pid), *self.process.children()]
            except psutil.NoSuchProcess:
                procs = []
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)
                self.cpu[proc.pid] = times.user + times.system
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak_child_mib(self) -> float | None:
        """The peak of the largest dispatcher process (the supervisor's children)."""
        children = {pid: rss for pid, rss in self.peaks.items() if pid != self.process.pid}
        return max(children.values()) / 2**20 if children else None

    def peak_supervisor_mib(self) -> float | None:
        rss = self.peaks.get(self.process.pid)
        return rss / 2**20 if rss else None

    def children_cpu_seconds(self) -> float:
        """CPU time used by the dispatcher processes (up to the last sample)."""
        return sum(cpu for pid, cpu in self.cpu.items() if pid != self.process.pid)
