"""The OS processes of a chaos run: starting them, signalling them, and cleaning them up.

Every process runs in its own session (its own process group), so that one signal reaches a
supervisor with its dispatcher children, or gunicorn with its workers, and nothing of the run
receives the terminal's Ctrl-C directly. Every group id is written to a pids file as soon as
it exists: whoever cleans up after a runner that died (the pytest test) kills what is listed
there, and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterable

# A process group is killed by cleanup only if its leader's command line contains one of
# these: a pid recorded by an earlier run may have been reused by an unrelated process.
OUR_COMMANDS = ("manage.py", "gunicorn", "chaos.provider")


class ProcessRegistry:
    """The pids file: every process group that this run started, for cleanup by anyone."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._groups: dict[str, int] = {}
        self._notes: dict[str, object] = {}

    def add(self, name: str, pgid: int) -> None:
        with self._lock:
            self._groups[f"{name}#{pgid}"] = pgid
            self._write()

    def note(self, **notes: object) -> None:
        """Record more for whoever cleans up (e.g. the embedded server this run started)."""
        with self._lock:
            self._notes.update(notes)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runner": os.getpid(), "groups": self._groups, **self._notes}, indent=1))
        tmp.replace(self.path)  # atomic: a reader never sees half a file

    def groups(self) -> list[int]:
        with self._lock:
            return list(self._groups.values())


def kill_recorded_groups(pids_file: Path) -> int:
    """SIGKILL every live process group listed in a pids file (after a runner died).

    Returns how many groups were signalled."""
    try:
        groups = json.loads(pids_file.read_text()).get("groups", {}).values()
    except (OSError, ValueError):
        return 0
    return kill_groups(groups)


def kill_groups(groups: Iterable[int]) -> int:
    killed = 0
    for pgid in groups:
        if not _group_alive(pgid):
            continue
        for signum in (signal.SIGCONT, signal.SIGKILL):  # a stopped process dies only once continued
            try:
                os.killpg(pgid, signum)
            except (ProcessLookupError, PermissionError):
                break
        else:
            killed += 1
    return killed


def _is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(marker in cmdline for marker in OUR_COMMANDS)


def _proc_stats():
    """(pid, state, parent pid, process group) of every process, from /proc (no pgrep needed)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                yield int(proc.name), fields[0], int(fields[1]), int(fields[2])
            except (OSError, IndexError, ValueError):
                continue


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group lives (its leader may be gone, its members not)."""
    return any(group == pgid and _is_ours(pid) for pid, _, _, group in _proc_stats())


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid`; zombie (Z) children are already dead."""
    return sorted(child for child, state, parent, _ in _proc_stats() if parent == pid and state != "Z")


class ManagedProcess:
    """One command of the run (and its process group), with its output in a log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path,
                 registry: ProcessRegistry):
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.registry = registry
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "a") as log:
            log.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n")
            log.flush()
            self.popen = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self.registry.add(self.name, self.popen.pid)  # the leader's pid is the group id

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def children(self) -> list[int]:
        return children_of(self.pid) if self.alive() else []

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        """Signal the leader only (a supervisor forwards to its children itself)."""
        if self.alive():
            os.kill(self.pid, signum)

    def kill_group(self) -> None:
        """SIGKILL the leader and everything in its group, at once: a host lost."""
        if self.popen is None:
            return
        kill_groups([self.pid])
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it did not exit within `timeout` seconds."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float, *, signalled: bool = False) -> int | None:
        """SIGTERM (graceful; unless `signalled` already), then SIGKILL of the whole group after
        `timeout` seconds. Returns the exit code of the graceful stop, or None if it had to be
        killed. (Never two SIGTERMs: a supervisor or dispatcher reads a second one as "now".)"""
        if not self.alive():
            return self.popen.returncode if self.popen else None
        try:
            os.killpg(self.pid, signal.SIGCONT)  # a stopped member could not act on SIGTERM
        except ProcessLookupError:
            pass
        if not signalled:
            self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill_group()
        else:
            kill_groups([self.pid])  # members that outlived their leader (none, normally)
        return code
