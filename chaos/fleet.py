"""The dispatchers of a run: N `manage.py run_dispatchers --processes 1` supervisors.

One supervisor per dispatcher process lets the faults hit both levels: SIGKILL of a
dispatcher process (its supervisor replaces it, as in production), and SIGKILL of a whole
supervisor with its process (a host lost; the runner starts it again after a pause).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .processes import ManagedProcess, ProcessRegistry

# The plain log format of notifications_project.settings: "date time LEVEL logger [pid] message".
# The runner asks for LOG_FORMAT=json (one object per line, multi-line errors included); the
# plain format is read too, in case a deployment's environment overrides it.
_PLAIN_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+) \[(?P<pid>\d+)\] (?P<message>.*)$")


def _parse(line: str) -> tuple[int, str] | None:
    """(pid, message) of a log line of ours, or None (a continuation line, gunicorn, ...)."""
    if line.startswith("{"):
        try:
            entry = json.loads(line)
            if "exception" in entry and "Traceback" in entry["exception"]:
                entry["message"] += " [with traceback]"
            return int(entry["process"]), str(entry["message"])
        except (ValueError, KeyError, TypeError):
            return None
    match = _PLAIN_LINE.match(line)
    return (int(match["pid"]), match["message"]) if match else None


class DispatcherFleet:
    """The supervisors, their dispatcher processes, and what their logs say."""

    def __init__(self, count: int, *, args: list[str], env: dict[str, str], cwd: Path, workdir: Path,
                 registry: ProcessRegistry, hosts: list[list[str]] | None = None, name: str = "dispatchers"):
        # `hosts`: per supervisor, the command that runs it on its host (the cluster run's
        # `ip netns exec ...`); none: on this one.
        hosts = hosts or [[] for _ in range(count)]
        self.supervisors = [
            ManagedProcess(f"{name}-{i}",
                           [*hosts[i], sys.executable, "manage.py", "run_dispatchers", "--processes", "1", *args],
                           env=env, cwd=cwd, log_path=workdir / f"{name}-{i}.log", registry=registry)
            for i in range(count)
        ]

    def start(self) -> None:
        for supervisor in self.supervisors:
            supervisor.start()

    def wait_ready(self, timeout: float) -> None:
        """Until every supervisor runs a dispatcher that has logged its start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for supervisor in self.supervisors:
                if not supervisor.alive():
                    raise RuntimeError(f"{supervisor.name} exited at start:\n{supervisor.log()[-3000:]}")
            # The log holds every start of a supervisor: look after the latest one only.
            if all(s.children() and " started: " in s.log().rsplit("===== start", 1)[-1] for s in self.supervisors):
                return
            time.sleep(0.2)
        raise RuntimeError(f"dispatchers not ready after {timeout:.0f}s")

    def processes(self) -> dict[int, ManagedProcess]:
        """Live dispatcher process pid -> its supervisor."""
        return {pid: s for s in self.supervisors if s.alive() for pid in s.children()}

    def stop_all(self, timeout: float) -> dict[str, int | None]:
        """SIGTERM every supervisor; their exit codes (None: killed after `timeout`)."""
        # All at once, so that they stop in parallel; a second SIGTERM would be a hard stop.
        for supervisor in self.supervisors:
            supervisor.signal(signal.SIGTERM)
        return {s.name: s.stop(timeout, signalled=True) for s in self.supervisors}

    def kill_all(self) -> None:
        for supervisor in self.supervisors:
            supervisor.kill_group()

    def sends(self) -> list[dict[str, Any]]:
        """Every send, from the dispatchers' "delivery" log records (outbox.recorder): pid,
        notification id, attempt, channel, when it ended (Unix seconds) and how long it took."""
        sends = []
        for supervisor in self.supervisors:
            for line in supervisor.log().splitlines():
                if not line.startswith("{") or '"duration_ms"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                    sends.append({"pid": int(entry["process"]), "id": str(entry["notification_id"]),
                                  "attempt": int(entry["attempt"]), "channel": str(entry["channel"]),
                                  "ended_at": float(entry["ended_at"]), "seconds": float(entry["duration_ms"]) / 1000})
                except (ValueError, KeyError, TypeError):
                    continue
        return sends

    def log_summary(self) -> dict[str, Any]:
        """What the dispatchers' logs say about the run (see outbox/dispatcher.py and
        outbox/supervisor.py for the messages)."""
        counts: Counter[str] = Counter()
        db_errors_by_pid: Counter[int] = Counter()
        deliveries = 0
        for supervisor in self.supervisors:
            for line in supervisor.log().splitlines():
                record = _parse(line)
                if record is None:
                    if "Traceback" in line:
                        counts["tracebacks"] += 1
                    continue
                pid, message = record
                if message.endswith("[with traceback]"):
                    counts["tracebacks"] += 1
                if message.startswith("delivery notification="):
                    deliveries += 1
                elif "database error" in message:
                    db_errors_by_pid[pid] += 1
                    counts["claim_loop_db_errors"] += 1
                elif "recording outcomes failed" in message:
                    db_errors_by_pid[pid] += 1
                    counts["recorder_db_errors"] += 1
                elif "replacing it" in message:
                    counts["processes_replaced"] += 1
                elif "crashed" in message:
                    counts["processes_crashed"] += 1
                elif "outcomes not recorded" in message:
                    # "N of M outcomes not recorded: their lease expired ..." (fenced out)
                    counts["fenced_outcomes"] += int(message.split(": ", 1)[1].split(" of ")[0])
                elif "could not record" in message:
                    counts["outcomes_given_up"] += int(message.split("could not record ")[1].split(" ")[0])
                elif "too close to their lease's end" in message:
                    counts["claims_left_for_lease_expiry"] += 1
                elif "LISTEN connection lost" in message:
                    counts["listener_reconnects"] += 1
        return {
            "deliveries_logged": deliveries,
            **dict(sorted(counts.items())),
            "db_error_lines_max_per_process": max(db_errors_by_pid.values(), default=0),
        }
