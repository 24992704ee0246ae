"""The PostgreSQL server under test and the databases of one run.

Without DATABASE_URL the harness uses its own embedded server (data in .data/bench-pg, a Unix
socket only), started like the project's (notifications_project.embedded_postgres) but on
another data directory, so that loading it does not slow anybody's test run and nobody's test
run disturbs it more than the shared CPUs do. With DATABASE_URL it uses that server: each run
creates its databases there and drops them at the end.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from .config import BENCH_PGDATA

# pgserver's import warns when XDG_RUNTIME_DIR is unset (always, under make); nothing to act on.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def _pgserver_bin_dir() -> Path | None:
    """The embedded server's binaries (pgbench and psql among them), if pgserver is installed."""
    try:
        import pgserver
    except ImportError:
        return None
    path = Path(pgserver.__file__).resolve().parent / "pginstall" / "bin"
    return path if path.is_dir() else None


def find_tool(name: str) -> str | None:
    """pgbench or psql: the embedded server's own first (same major version), else PATH."""
    bin_dir = _pgserver_bin_dir()
    if bin_dir and (bin_dir / name).exists():
        return str(bin_dir / name)
    return shutil.which(name)


@dataclass
class Server:
    """Where the server listens and how to reach one of its databases."""

    params: dict[str, str]  # libpq parameters, without dbname
    embedded_data_dir: Path | None = None  # set when this run uses the embedded server
    started_here: bool = False  # the embedded server was not running before this run
    created: list[str] = field(default_factory=list)  # databases this run created

    @classmethod
    def open(cls) -> "Server":
        """DATABASE_URL's server, or the embedded bench server (started if need be)."""
        url = os.environ.get("DATABASE_URL")
        if url:
            params = {k: str(v) for k, v in pg_conninfo.conninfo_to_dict(url).items() if k != "dbname"}
            return cls(params=params)
        from notifications_project import embedded_postgres

        started = not embedded_postgres.is_running(BENCH_PGDATA)
        embedded = embedded_postgres.ensure_running(BENCH_PGDATA)
        params = {"host": embedded.socket_dir, "port": str(embedded.port), "user": embedded_postgres.USER}
        return cls(params=params, embedded_data_dir=BENCH_PGDATA, started_here=started)

    # --- addressing ------------------------------------------------------------------------

    def conninfo(self, dbname: str) -> str:
        """A libpq connection string (psycopg, pgbench, psql)."""
        return pg_conninfo.make_conninfo(dbname=dbname, **self.params)

    def url(self, dbname: str) -> str:
        """A DATABASE_URL for the service's processes (a socket directory goes in as the
        percent-encoded host, which dj-database-url and libpq both read)."""
        p = self.params
        user = quote(p.get("user", ""), safe="")
        password = f":{quote(p['password'], safe='')}" if p.get("password") else ""
        host = quote(p.get("host", "localhost"), safe="")
        port = f":{p['port']}" if p.get("port") else ""
        query = f"?sslmode={p['sslmode']}" if p.get("sslmode") else ""
        return f"postgresql://{user}{password}@{host}{port}/{quote(dbname, safe='')}{query}"

    def connect(self, dbname: str) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname), autocommit=True)

    # --- databases of this run -------------------------------------------------------------

    def create_database(self, name: str) -> None:
        with self.connect("postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)

    def drop_created(self) -> None:
        """Drop what this run created (the history of 100,000s of notifications is big)."""
        with self.connect("postgres") as conn:
            for name in self.created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.created.clear()

    def drop_leftovers(self, prefix: str) -> None:
        """Drop databases of earlier runs that died before cleaning up; only on our own
        embedded server, never on somebody's DATABASE_URL server, and only under run_lock()
        (so that no other run is using them)."""
        if self.embedded_data_dir is None:
            return
        with self.connect("postgres") as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                (prefix + "%",))]
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def commit_timestamps(self) -> bool:
        """Whether the server records commit times (track_commit_timestamp), which the latency
        measurement reads. Turned on, with a restart, on our own embedded server only (once:
        it is kept in its data directory); a DATABASE_URL server is left as it is."""
        with self.connect("postgres") as conn:
            if conn.execute("SHOW track_commit_timestamp").fetchone()[0] == "on":
                return True
            if self.embedded_data_dir is None:
                return False
            conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        from notifications_project import embedded_postgres

        embedded_postgres.restart(self.embedded_data_dir)
        return True

    def stop_if_started_here(self) -> None:
        if self.embedded_data_dir is not None and self.started_here:
            from notifications_project import embedded_postgres

            embedded_postgres.stop(self.embedded_data_dir)

    # --- facts and counters ----------------------------------------------------------------

    def version(self) -> str:
        with self.connect("postgres") as conn:
            return conn.execute("SHOW server_version").fetchone()[0]

    def settings(self, names: list[str]) -> dict[str, str]:
        with self.connect("postgres") as conn:
            return {name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
                    for name in names}

    def table_writes(self, dbname: str, tables: list[str]) -> dict[str, dict[str, int]]:
        """Row writes so far per table (pg_stat_user_tables): inserted, updated, of which HOT
        (no new index entries), deleted. Same reporting delay as xact_commit."""
        with self.connect(dbname) as conn:
            rows = conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables "
                "WHERE relname = ANY(%s)", (tables,)).fetchall()
        return {name: {"inserted": ins, "updated": upd, "hot_updated": hot, "deleted": dele}
                for name, ins, upd, hot, dele in rows}

    def wal_lsn(self, dbname: str) -> str:
        """The server's current WAL insert position: the difference of two is the WAL written
        between them, by every database of the server (the bench's run alone, here)."""
        with self.connect(dbname) as conn:
            return conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]

    def wal_bytes_since(self, dbname: str, lsn: str) -> int:
        with self.connect(dbname) as conn:
            return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)",
                                    (lsn,)).fetchone()[0])

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) used so far by the embedded server: the postmaster, its
        live backends, and the backends that have exited (the kernel adds a reaped child's
        time to its parent's children_user/children_system). None on a DATABASE_URL server,
        which may be on another host."""
        if self.embedded_data_dir is None:
            return None
        import psutil

        try:
            postmaster = psutil.Process(int((self.embedded_data_dir / "postmaster.pid").read_text().split()[0]))
            times = postmaster.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            children = postmaster.children()
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
        for proc in children:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def checkpoint(self, dbname: str) -> None:
        """CHECKPOINT before a timed phase, so that the previous phase's dirty pages are not
        written during this one (needs superuser or pg_checkpoint; skipped otherwise)."""
        try:
            with self.connect(dbname) as conn:
                conn.execute("CHECKPOINT")
        except psycopg.Error:
            pass

    def xact_commit(self, dbname: str) -> int:
        """Committed transactions of `dbname` so far (pg_stat_database).

        Backends report their counts at the end of a transaction at most once a second, and
        at exit; so read this only after the processes of interest have exited. This
        connection's own SELECT is not in the figure it reads; it is reported when the
        connection closes (callers account for it).
        """
        with self.connect(dbname) as conn:
            return conn.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def settle_stats() -> None:
    """Let backends that just exited report their statistics before they are read."""
    time.sleep(0.5)


@contextmanager
def run_lock(data_dir: Path) -> Iterator[None]:
    """One benchmark run at a time per embedded server: a second run waits for the first.

    Two runs at once would measure each other; and each run starts by dropping the databases
    that crashed runs left behind, which must not be a running one's."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.parent / f"{data_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
