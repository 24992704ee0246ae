"""Delivery: timed drains of a pre-filled outbox by `run_dispatchers`.

A drain is timed from the first claim to the last recorded outcome, both read from the
database's clock, so that process start-up (Django's imports) is not counted and the poller's
own resolution does not matter:
- first claim: a claim moves a row's run_at to the end of its lease (outbox/sql.py, CLAIM),
  so the earliest `run_at - lease` among leased rows, seen by a poller within milliseconds of
  the first claim, is that claim's time;
- last outcome: the latest 'sent' event's created_at (RECORD's statement time).
The outbox is filled beforehand through outbox.store.enqueue (the intake's own statement,
1,000 rows per call), then vacuumed, as a backlog would be after a burst of intake.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .database import Server, settle_stats
from .servers import Process, RssSampler, start_dispatchers

BENCH_CLIENT = "bench"
TABLES = ["outbox", "notification", "notification_event"]


def setup_django(database_url: str, channels_file: Path) -> None:
    """Django in this process, on the run's database (for outbox.store.enqueue)."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["NOTIFY_CHANNELS_FILE"] = str(channels_file)
    os.environ["LOG_LEVEL"] = "WARNING"  # settings.LOGGING would print procrastinate's INFO lines
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifications_project.settings")
    import django

    django.setup()


def enqueue_bulk(count: int, *, channel: str) -> None:
    """Queue `count` notifications of `channel` through outbox.store.enqueue, 1,000 per call."""
    from django.db import connection

    from notifications.ids import new_notification_id
    from notifications.models import ApiClient
    from outbox import store

    client_id = ApiClient.objects.get_or_create(name=BENCH_CLIENT)[0].pk
    for start in range(0, count, 1000):
        chunk = [store.NewNotification(id=new_notification_id(), channel=channel, recipient=f"user{i}@example.com",
                                       subject="Benchmark", message=f"drain message {i}")
                 for i in range(start, min(count, start + 1000))]
        store.enqueue(chunk, client_id=client_id)
    connection.close()  # its statistics reach pg_stat_database now, not during the drain


def wait_for_idle_intake(server: Server, dbname: str, *, quiet_seconds: float = 0.3, timeout: float = 30) -> None:
    """Return once no notification has been accepted for `quiet_seconds`.

    A load generator stops at its deadline with requests still in flight: the API finishes
    them after it has gone (up to its connections' worth, tens of milliseconds). A drain that
    filled the outbox before they land would find them among its rows (a smoke run counted
    1,008 sent of 1,000)."""
    deadline = time.monotonic() + timeout
    with server.connect(dbname) as conn:
        newest, quiet_since = None, time.monotonic()
        while time.monotonic() < deadline:
            # UUIDv7 ids grow with time: the newest row by the primary key, whatever the table's size.
            (latest,) = conn.execute("SELECT id FROM notification ORDER BY id DESC LIMIT 1").fetchone() or (None,)
            if latest != newest:
                newest, quiet_since = latest, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_seconds:
                return
            time.sleep(0.05)
    raise RuntimeError(f"the intake kept accepting notifications for {timeout}s after its load had stopped")


def reset_outbox(server: Server, dbname: str) -> None:
    """An empty outbox (rows left by the intake measurements are not part of a drain)."""
    with server.connect(dbname) as conn:
        conn.execute("TRUNCATE outbox")


def vacuum(server: Server, dbname: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute("VACUUM (ANALYZE) outbox, notification, notification_event")
    server.checkpoint(dbname)


@dataclass(frozen=True)
class Drain:
    delivered: int
    seconds: float  # first claim to last outcome (database clock)
    peak_rss_mib: float | None = None  # the largest dispatcher process
    supervisor_rss_mib: float | None = None
    commits: int | None = None
    # Row writes per table during the run (pg_stat_user_tables deltas), with measure_resources.
    table_writes: dict[str, dict[str, int]] | None = None
    # WAL written during the run (the server's insert position before and after), with
    # measure_resources: the deliveries', and the heartbeats' of the dispatchers, a few bytes.
    wal_bytes: int | None = None
    # Where the CPU went, from the dispatchers' start to the empty outbox (window_seconds):
    # the dispatcher processes' and the database server's CPU seconds.
    window_seconds: float | None = None
    dispatcher_cpu_seconds: float | None = None
    postgres_cpu_seconds: float | None = None

    @property
    def per_s(self) -> float:
        return self.delivered / self.seconds

    @property
    def commits_per_notification(self) -> float | None:
        return None if self.commits is None else self.commits / self.delivered

    @property
    def row_versions_per_delivery(self) -> float | None:
        """Rows inserted, updated or deleted in outbox, notification and notification_event,
        per delivery: each is a row version written (a delete marks one dead)."""
        if self.table_writes is None:
            return None
        writes = sum(counts[kind] for counts in self.table_writes.values() for kind in ("inserted", "updated", "deleted"))
        return writes / self.delivered

    @property
    def wal_bytes_per_delivery(self) -> float | None:
        return None if self.wal_bytes is None else self.wal_bytes / self.delivered


class _Poller:
    """The harness's one connection to the database during a drain; counts its statements,
    each a transaction of its own, so that they can be taken out of the commit count."""

    def __init__(self, server: Server, dbname: str):
        self.conn = psycopg.connect(server.conninfo(dbname), autocommit=True)
        self.statements = 0

    def one(self, query: str, params: tuple = ()) -> tuple:
        self.statements += 1
        return self.conn.execute(query, params).fetchone()

    def close(self) -> None:
        self.conn.close()


def drain(*, server: Server, dbname: str, env: dict[str, str], log_dir: Path, name: str, args: list[str],
          expected: int, lease_seconds: float = 60.0, measure_resources: bool = False) -> Drain:
    """Start `run_dispatchers ARGS` on a filled outbox; time it until the outbox is empty.

    Also samples the peak RSS of each dispatcher process (psutil, every 100 ms) and the CPU
    time of the dispatchers and of the database server. With measure_resources, also the
    database's commits and row writes during the run (pg_stat_database, pg_stat_user_tables:
    read before the start and after the processes have exited, less the harness's own
    statements).
    """
    timeout = 60 + expected / 200  # far beyond any plausible rate: only a stuck run hits it
    commits_before = None
    if measure_resources:
        settle_stats()
        commits_before = server.xact_commit(dbname)  # first: the next read's commit is then in the delta
        writes_before = server.table_writes(dbname, TABLES)
        wal_before = server.wal_lsn(dbname)
    poller = _Poller(server, dbname)
    pg_cpu_start, window_start = server.cpu_seconds(), time.monotonic()
    process = start_dispatchers(env, log_dir, *args, "--lease-seconds", str(lease_seconds), name=name)
    sampler = RssSampler(process)
    sampler.start()
    try:
        first_claim = _wait_first_claim(poller, process, lease_seconds, timeout, expected)
        deadline = time.monotonic() + timeout
        while poller.one("SELECT EXISTS (SELECT 1 FROM outbox)")[0]:
            _check(process, deadline, "the outbox to empty")
            time.sleep(0.05)
        pg_cpu_end, window_end = server.cpu_seconds(), time.monotonic()
        dispatcher_cpu = sampler.children_cpu_seconds()
        last, delivered = poller.one(
            "SELECT extract(epoch FROM max(created_at))::float8, count(*) FROM notification_event "
            "WHERE status = 'sent' AND created_at >= to_timestamp(%s)", (first_claim,))
    finally:
        process.stop(timeout=lease_seconds + 10)
        sampler.stop()
        poller.close()
    if delivered != expected:
        raise RuntimeError(f"{name}: {delivered} sent of {expected}; see {process.log_path}")
    commits = writes = wal_bytes = None
    if measure_resources:
        wal_bytes = server.wal_bytes_since(dbname, wal_before)
        settle_stats()
        # Less the poller's statements and the two transactions that read the counters before.
        commits = server.xact_commit(dbname) - commits_before - poller.statements - 2
        writes_after = server.table_writes(dbname, TABLES)
        writes = {table: {k: v - writes_before.get(table, {}).get(k, 0) for k, v in counts.items()}
                  for table, counts in writes_after.items()}
    return Drain(delivered=delivered, seconds=last - first_claim, peak_rss_mib=sampler.peak_child_mib(),
                 supervisor_rss_mib=sampler.peak_supervisor_mib(), commits=commits, table_writes=writes,
                 wal_bytes=wal_bytes,
                 window_seconds=window_end - window_start, dispatcher_cpu_seconds=dispatcher_cpu,
                 postgres_cpu_seconds=None if pg_cpu_start is None or pg_cpu_end is None else pg_cpu_end - pg_cpu_start)


def _wait_first_claim(poller: _Poller, process: Process, lease_seconds: float, timeout: float,
                      expected: int) -> float:
    """The database time (epoch seconds) of the first claim of this run.

    Leased rows have run_at = claim time + lease; queued ones are due (run_at in the past).
    The query is a range scan of outbox_claim_idx from its far end: nearly free until the
    first claim. (The drains enqueue at the default priority, 1.) Should a claim ever stop
    moving run_at, a row count that has dropped below `expected` (checked every 20th poll)
    gives the time of that poll instead, 0.1 s late at worst.
    """
    deadline = time.monotonic() + timeout
    leased = ("SELECT extract(epoch FROM min(run_at))::float8 - %s FROM outbox "
              "WHERE priority = 1 AND run_at > statement_timestamp() + make_interval(secs => %s)")
    shrunk = ("SELECT CASE WHEN count(*) < %s THEN extract(epoch FROM statement_timestamp())::float8 END "
              "FROM outbox")
    polls = 0
    while True:
        (claimed_at,) = poller.one(leased, (lease_seconds, lease_seconds / 2))
        if claimed_at is None and polls % 20 == 19:
            (claimed_at,) = poller.one(shrunk, (expected,))
        if claimed_at is not None:
            return claimed_at
        _check(process, deadline, "the first claim")
        polls += 1
        time.sleep(0.005)


def _check(process: Process, deadline: float, waiting_for: str) -> None:
    if not process.alive():
        raise RuntimeError(f"{process.name} exited ({process.popen.returncode}) before {waiting_for}:\n"
                           f"{process.log_tail()}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"{process.name}: timed out waiting for {waiting_for}; see {process.log_path}")
