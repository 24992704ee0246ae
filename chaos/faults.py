"""The fault schedule of a run, and injecting it.

Faults, each aimed (where it matters) at the dispatcher that holds the most rows being sent
at that moment, so that it hits work in flight rather than an idle process:
- kill_process:    SIGKILL of one dispatcher process; its supervisor replaces it.
- kill_supervisor: SIGKILL of a supervisor and its process at once (a host lost); started
                   again after a pause.
- sigterm:         SIGTERM of a supervisor: a graceful stop (in-flight sends finish and are
                   recorded, exit code 0); started again after a pause.
- sigstop:         SIGSTOP of a dispatcher process for longer than its lease, then SIGCONT:
                   its rows are taken over meanwhile, and what it records afterwards must be
                   fenced out.
- db_restart:      a restart of the PostgreSQL server (every session cut; down for a few
                   seconds by default), while a probe watches the API answer 503 with
                   Retry-After and recover.
Faults run one after another, each at its scheduled time or when the previous one is over.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from .database import RunDatabase
from .fleet import DispatcherFleet
from .processes import ManagedProcess

KINDS = ("kill_process", "kill_supervisor", "sigterm", "sigstop", "db_restart")


def build_schedule(*, duration: float, kills: int, sigterms: int, sigstops: int, db_restarts: int,
                   rng: random.Random) -> list[tuple[float, str]]:
    """(seconds after the load starts, kind), spread over 10%..85% of the load's duration.

    Kills alternate between a dispatcher process and a whole supervisor. Stalls come early
    (each lasts longer than a lease), database restarts mid-load (so that the API sees them),
    then the graceful stop and the remaining kills."""
    kill_kinds = ["kill_process" if i % 2 == 0 else "kill_supervisor" for i in range(kills)]
    order = (kill_kinds[:1] + ["sigstop"] * sigstops + kill_kinds[1:2] + ["db_restart"] * db_restarts
             + ["sigterm"] * sigterms + kill_kinds[2:])
    if not order:
        return []
    step = 0.75 * duration / max(1, len(order) - 1)
    return [(max(0.0, 0.1 * duration + i * step + rng.uniform(-0.02, 0.02) * duration), kind)
            for i, kind in enumerate(order)]


class OutageProbe(threading.Thread):
    """Asks the API for a read every 50 ms around a database restart: while the database is
    down it must answer 503 with Retry-After within a bounded time, and 2xx again after."""

    def __init__(self, base_url: str, api_key: str, *, request_timeout: float = 15.0, limit: float = 90.0):
        super().__init__(name="outage-probe", daemon=True)
        parts = urlsplit(base_url)
        self.host, self.port, self.api_key = parts.hostname, parts.port, api_key
        self.request_timeout, self.limit = request_timeout, limit
        self.restarted_at: float | None = None  # set when the restart has completed
        self.answers: dict[str, int] = {}
        self.without_retry_after = 0
        self.max_latency = 0.0
        self.recovered_after: float | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while time.monotonic() < deadline:
            started = time.monotonic()
            status, retry_after = self._get()
            latency = time.monotonic() - started
            self.max_latency = max(self.max_latency, latency)
            self.answers[str(status)] = self.answers.get(str(status), 0) + 1
            if status == 503 and not retry_after:
                self.without_retry_after += 1
            if self.restarted_at is not None and started >= self.restarted_at and status == 200:
                self.recovered_after = time.monotonic() - self.restarted_at
                return
            time.sleep(0.05)

    def _get(self) -> tuple[int | str, str | None]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.request_timeout)
        try:
            connection.request("GET", "/api/v1/notifications?page_size=1",
                               headers={"Authorization": f"Bearer {self.api_key}"})
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader("Retry-After")
        except TimeoutError:
            return "timeout", None
        except (OSError, http.client.HTTPException):
            return "connection_error", None
        finally:
            connection.close()

    def as_dict(self) -> dict[str, Any]:
        return {"answers": dict(sorted(self.answers.items())), "answers_503_without_retry_after": self.without_retry_after,
                "max_latency_s": round(self.max_latency, 3),
                "recovered_after_s": None if self.recovered_after is None else round(self.recovered_after, 3)}


class FaultInjector:
    """Runs a schedule against the fleet and the database, and counts what it did."""

    def __init__(self, *, fleet: DispatcherFleet, database: RunDatabase, api_base: str, api_key: str,
                 lease_seconds: float, pause: float, stall_extra: float, db_down_seconds: float,
                 rng: random.Random, log: Callable[[str], None]):
        self.fleet = fleet
        self.database = database
        self.api_base, self.api_key = api_base, api_key
        self.lease_seconds = lease_seconds
        self.pause = pause
        self.stall_extra = stall_extra
        self.db_down_seconds = db_down_seconds
        self.rng = rng
        self.log = log
        self.stopped: set[int] = set()  # dispatcher pids under SIGSTOP
        self.counts = {"sigkill": 0, "sigkill_process": 0, "sigkill_supervisor": 0, "sigterm": 0,
                       "sigstop": 0, "db_restart": 0, "db_restart_skipped": 0}
        self.events: list[dict[str, Any]] = []
        self.sigterm_exit_codes: list[int | None] = []
        self.db_outages: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._t0 = time.monotonic()

    def run(self, schedule: list[tuple[float, str]], *, t0: float, stop: threading.Event) -> None:
        self._t0 = t0
        for at, kind in schedule:
            stop.wait(max(0.0, t0 + at - time.monotonic()))
            if stop.is_set():
                return
            try:
                getattr(self, f"_{kind}")(stop)
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                self.log(f"fault {kind} failed: {exc}")

    # --- the faults -----------------------------------------------------------------------------

    def _kill_process(self, stop: threading.Event) -> None:
        pid, supervisor, held, sending = self._busiest()
        os.kill(pid, signal.SIGKILL)
        self.counts["sigkill"] += 1
        self.counts["sigkill_process"] += 1
        self._event("kill_process", f"SIGKILL dispatcher process {pid} ({supervisor.name} replaces it)",
                    pid=pid, rows_held=held, rows_sending=sending)

    def _kill_supervisor(self, stop: threading.Event) -> None:
        pid, supervisor, held, sending = self._busiest()
        supervisor.kill_group()
        self.counts["sigkill"] += 1
        self.counts["sigkill_supervisor"] += 1
        self._event("kill_supervisor", f"SIGKILL {supervisor.name} and its dispatcher {pid}; restart in {self.pause:g}s",
                    pid=pid, rows_held=held, rows_sending=sending)
        stop.wait(self.pause)
        if not stop.is_set():  # an aborted run cleans up instead
            supervisor.start()

    def _sigterm(self, stop: threading.Event) -> None:
        pid, supervisor, held, sending = self._busiest()
        started = time.monotonic()
        supervisor.signal(signal.SIGTERM)
        # Graceful: in-flight sends (bounded by the send timeout) finish and are recorded.
        code = supervisor.stop(self.lease_seconds + 15, signalled=True)
        self.counts["sigterm"] += 1
        self.sigterm_exit_codes.append(code)
        self._event("sigterm", f"SIGTERM {supervisor.name} (dispatcher {pid}): exit code {code} after "
                    f"{time.monotonic() - started:.1f}s; restart in {self.pause:g}s",
                    pid=pid, rows_held=held, rows_sending=sending, exit_code=code)
        stop.wait(self.pause)
        if not stop.is_set():  # an aborted run cleans up instead
            supervisor.start()

    def _sigstop(self, stop: threading.Event) -> None:
        pid, supervisor, held, sending = self._busiest()
        stall = self.lease_seconds + self.stall_extra
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)
        self.counts["sigstop"] += 1
        self._event("sigstop", f"SIGSTOP dispatcher process {pid} for {stall:g}s (lease {self.lease_seconds:g}s)",
                    pid=pid, rows_held=held, rows_sending=sending, seconds=stall)
        try:
            # Not cut short by `stop`: the process must be continued in any case.
            time.sleep(stall)
        finally:
            os.kill(pid, signal.SIGCONT)
            self.stopped.discard(pid)
        self._event("sigcont", f"SIGCONT dispatcher process {pid}", pid=pid)

    def _db_restart(self, stop: threading.Event) -> None:
        if not self.database.can_restart:
            self.counts["db_restart_skipped"] += 1
            self._event("db_restart", "database restart skipped: DATABASE_URL without CHAOS_DB_RESTART_CMD")
            return
        probe = OutageProbe(self.api_base, self.api_key)
        probe.start()
        time.sleep(0.2)  # a few answers from before the restart
        if not self.database.embedded:
            how = "CHAOS_DB_RESTART_CMD"
        else:
            how = f"down for {self.db_down_seconds:g}s" if self.db_down_seconds > 0 else "fast restart"
        self._event("db_restart", f"restarting PostgreSQL ({how}: every session is cut)")
        seconds = self.database.restart(self.db_down_seconds)
        probe.restarted_at = time.monotonic()
        self.counts["db_restart"] += 1
        probe.join(timeout=probe.limit + 20)
        outage = {"restart_seconds": round(seconds, 2), "down_seconds_asked": self.db_down_seconds,
                  "api_probe": probe.as_dict()}
        self.db_outages.append(outage)
        self._event("db_restarted", f"PostgreSQL back after {seconds:.1f}s; API probe: {probe.as_dict()}")

    # --- targets --------------------------------------------------------------------------------

    def _busiest(self, wait: float = 3.0) -> tuple[int, ManagedProcess, int, int]:
        """The dispatcher process holding the most rows being sent (waiting up to `wait` s for
        one that holds any): (pid, its supervisor, rows held, rows being sent)."""
        deadline = time.monotonic() + wait
        while True:
            candidates = {pid: s for pid, s in self.fleet.processes().items() if pid not in self.stopped}
            if not candidates:
                if time.monotonic() > deadline + 30:
                    raise RuntimeError("no live dispatcher process to aim at")
                time.sleep(0.2)
                continue
            held = self._leases()
            best = max(candidates, key=lambda pid: held.get(pid, (0, 0))[::-1])
            rows, sending = held.get(best, (0, 0))
            if sending or time.monotonic() > deadline:
                if not rows:  # nobody holds anything: any process will do
                    best = self.rng.choice(sorted(candidates))
                return best, candidates[best], rows, sending
            time.sleep(0.05)

    def _leases(self) -> dict[int, tuple[int, int]]:
        """pid -> (rows leased, rows being sent), from the outbox's locked_by (host:pid:random)."""
        rows = self.database.query(
            "SELECT locked_by, count(*), count(*) FILTER (WHERE sending) FROM outbox "
            "WHERE locked_by IS NOT NULL AND run_at > statement_timestamp() GROUP BY locked_by",
            retry_for=10,
        )
        held: dict[int, tuple[int, int]] = {}
        for locked_by, count, sending in rows:
            try:
                pid = int(locked_by.rsplit(":", 2)[1])
            except (IndexError, ValueError):
                continue
            held[pid] = (count, sending)
        return held

    def _event(self, kind: str, text: str, **details: Any) -> None:
        at = time.monotonic() - self._t0
        self.events.append({"t": round(at, 2), "kind": kind, **details})
        self.log(text)
