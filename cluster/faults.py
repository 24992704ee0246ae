"""The cluster run's faults, of the network kind, injected one after another during the load.

- dispatcher_cut:  one dispatcher host cut off from `db` (blackhole routes both ways) for the
                   lease plus a few seconds, at a moment it holds rows (sends in flight),
                   then healed: its rows are taken over meanwhile, and whatever it records
                   when it comes back must be fenced off.
- api_cut:         one API host's bridge port down for a few seconds: the load balancer's
                   health checks take it out, requests in flight there time out at the load
                   balancer and the clients send them again with their Idempotency-Key.
- dispatcher_host_killed: every process of one dispatcher host SIGKILLed at once (a host
                   lost); its supervisor is started again after a pause.
- db_restart:      PostgreSQL stopped (fast: every session cut), down a few seconds, started.
- pool_restart:    PgBouncer killed and started again: every API connection to it is cut.
(The 20 ms of added round trip between the dispatcher hosts and `db` is no event: the
dispatchers reach the database through the delay proxy for the whole run.)
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from chaos.database import RunDatabase
from chaos.fleet import DispatcherFleet
from chaos.processes import ManagedProcess

from .network import Network
from .services import Postgres

KINDS = ("dispatcher_cut", "api_cut", "dispatcher_host_killed", "db_restart", "pool_restart")


def build_schedule(duration: float) -> list[tuple[float, str]]:
    """(seconds after the load starts, kind): spread over 10%..80% of the load's duration, in
    the order of KINDS. A fault starts at its time or when the previous one is over."""
    step = 0.7 * duration / (len(KINDS) - 1)
    return [(0.1 * duration + i * step, kind) for i, kind in enumerate(KINDS)]


class ClusterFaults:
    """Runs the schedule against the hosts; `events` and `counts` say what it did."""

    def __init__(self, *, network: Network, fleet: DispatcherFleet, dispatcher_hosts: list[str],
                 database: RunDatabase, postgres: Postgres, pool: ManagedProcess, lease_seconds: float,
                 cut_extra: float, api_cut_seconds: float, db_down_seconds: float, pause: float,
                 log: Callable[[str], None]):
        self.network, self.fleet, self.dispatcher_hosts = network, fleet, dispatcher_hosts
        self.database, self.postgres, self.pool = database, postgres, pool
        self.lease_seconds, self.cut_extra = lease_seconds, cut_extra
        self.api_cut_seconds, self.db_down_seconds, self.pause = api_cut_seconds, db_down_seconds, pause
        self.log = log
        self.counts = {kind: 0 for kind in KINDS}
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.cut_pids: list[int] = []  # the dispatcher processes of the host that was cut off
        self.rows_held_at_cut = (0, 0)  # (leased, being sent) by that host when it was cut
        self._t0 = time.monotonic()

    def run(self, schedule: list[tuple[float, str]], *, t0: float, stop: threading.Event) -> None:
        self._t0 = t0
        for at, kind in schedule:
            if stop.wait(max(0.0, t0 + at - time.monotonic())):
                return
            try:
                getattr(self, f"_{kind}")(stop)
                self.counts[kind] += 1
            except Exception as exc:  # reported: a fault that did not happen fails the run
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                self.log(f"fault {kind} FAILED: {exc}")

    # --- the faults ---------------------------------------------------------------------------------

    def _dispatcher_cut(self, stop: threading.Event) -> None:
        index, rows, sending = self._busiest_host()
        host = self.dispatcher_hosts[index]
        self.cut_pids = self.fleet.supervisors[index].children()
        self.rows_held_at_cut = (rows, sending)
        seconds = self.lease_seconds + self.cut_extra
        self.network.cut_off(host, "db")
        self._event("dispatcher_cut", f"{host} cut off from db for {seconds:g}s, holding {rows} rows "
                    f"({sending} being sent)", host=host, pids=self.cut_pids, rows=rows, sending=sending)
        stop.wait(seconds)
        self.network.heal_cut(host, "db")
        self._event("dispatcher_healed", f"{host} reaches db again", host=host)

    def _api_cut(self, stop: threading.Event) -> None:
        self.network.isolate("api1")
        self._event("api_cut", f"api1 cut off for {self.api_cut_seconds:g}s", host="api1")
        stop.wait(self.api_cut_seconds)
        self.network.rejoin("api1")
        self._event("api_rejoined", "api1 back on the network", host="api1")

    def _dispatcher_host_killed(self, stop: threading.Event) -> None:
        index, rows, sending = self._busiest_host()
        host = self.dispatcher_hosts[index]
        killed = self.network.kill_host(host)
        self.fleet.supervisors[index].wait(10)
        self._event("dispatcher_host_killed", f"{host}: all {killed} processes SIGKILLed, holding {rows} rows "
                    f"({sending} being sent)", host=host, processes=killed, rows=rows, sending=sending)
        stop.wait(self.pause)
        self.fleet.supervisors[index].start()
        self._event("dispatcher_host_started", f"{host}: dispatchers started again", host=host)

    def _db_restart(self, stop: threading.Event) -> None:
        self._event("db_restart", f"restarting PostgreSQL (down for {self.db_down_seconds:g}s: every session is cut)")
        seconds = self.postgres.restart(self.db_down_seconds)
        self._event("db_restarted", f"PostgreSQL back after {seconds:.1f}s", seconds=round(seconds, 2))

    def _pool_restart(self, stop: threading.Event) -> None:
        self.network.kill_host("pool")  # PgBouncer is the pool host's only process
        self.pool.wait(10)
        self._event("pool_restart", "PgBouncer killed: every API connection to it is cut")
        stop.wait(0.5)
        self.pool.start()
        self._event("pool_started", "PgBouncer started again")

    # --- targets ----------------------------------------------------------------------------------

    def _busiest_host(self, wait: float = 5.0) -> tuple[int, int, int]:
        """The dispatcher host whose processes hold the most rows being sent, waiting up to
        `wait` seconds for one that sends: (its index, rows leased, rows being sent)."""
        deadline = time.monotonic() + wait
        while True:
            held = self._leases()
            per_host = []
            for index, supervisor in enumerate(self.fleet.supervisors):
                pids = supervisor.children() if supervisor.alive() else []
                rows = sum(held.get(pid, (0, 0))[0] for pid in pids)
                sending = sum(held.get(pid, (0, 0))[1] for pid in pids)
                per_host.append((sending, rows, index))
            sending, rows, index = max(per_host)
            if sending or time.monotonic() > deadline:
                return index, rows, sending
            time.sleep(0.01)

    def _leases(self) -> dict[int, tuple[int, int]]:
        """pid -> (rows leased, rows being sent), from the outbox's locked_by (host:pid:random)."""
        held: dict[int, tuple[int, int]] = {}
        for locked_by, count, sending in self.database.query(
                "SELECT locked_by, count(*), count(*) FILTER (WHERE sending) FROM outbox "
                "WHERE locked_by IS NOT NULL AND run_at > statement_timestamp() GROUP BY locked_by", retry_for=10):
            try:
                held[int(locked_by.rsplit(":", 2)[1])] = (count, sending)
            except (IndexError, ValueError):
                continue
        return held

    def _event(self, kind: str, text: str, **details: Any) -> None:
        self.events.append({"t": round(time.monotonic() - self._t0, 2), "kind": kind, "at": time.time(), **details})
        self.log(text)
