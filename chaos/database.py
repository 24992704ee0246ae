"""The run's database: its own PostgreSQL server and a fresh database, and restarting it.

Without DATABASE_URL the run uses an embedded server of its own (pgserver, data under
`.data/chaos-pg` by default, i.e. NOTIFY_EMBEDDED_PGDATA): restarting it disturbs neither
`make run` nor the test suite, which use `.data/pg`. A file lock next to the data directory
lets one run at a time use that server, since a run restarts it and stops it at the end.

With DATABASE_URL the run creates its database on that server; a restart of that server needs
CHAOS_DB_RESTART_CMD (a shell command), otherwise the restart fault is skipped and reported.

Either way each run gets a fresh database (`chaos_run_<time>_<pid>`), migrated by the runner,
so that every figure of the run counts this run's rows only.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

RUN_DB_PREFIX = "chaos_run_"
ROOT = Path(__file__).resolve().parent.parent


class RunDatabase:
    """The server and database of one run. `open()` before use, `close()` after."""

    def __init__(self, *, pgdata: Path, external_url: str | None = None, restart_cmd: str | None = None,
                 lock_timeout: float = 600.0):
        self.pgdata = pgdata.resolve()
        self.external_url = external_url or None
        self.restart_cmd = restart_cmd or None
        self.lock_timeout = lock_timeout
        self.name = f"{RUN_DB_PREFIX}{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
        self.url = ""  # DATABASE_URL of the run's database, for the processes the run starts
        self.conninfo = ""  # the same, for the runner's own connection
        self.started_server = False
        self._admin = ""  # a connection string to a database other than the run's
        self._lock_file: Any = None
        self._conn: psycopg.Connection | None = None
        self._conn_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        return self.external_url is None

    @property
    def can_restart(self) -> bool:
        return self.embedded or self.restart_cmd is not None

    def describe(self) -> str:
        where = f"embedded PostgreSQL in {self.pgdata}" if self.embedded else _without_password(self.external_url)
        return f"database {self.name} on {where}"

    def open(self) -> None:
        if self.embedded:
            self._take_lock()
            # Set before the embedded module is imported: its default data directory is read
            # from here, and so is that of anything else this process imports.
            os.environ["NOTIFY_EMBEDDED_PGDATA"] = str(self.pgdata)
            from notifications_project import embedded_postgres

            self.started_server = not embedded_postgres.is_running(self.pgdata)
            server = embedded_postgres.ensure_running(self.pgdata)
            self._admin = server.conninfo("postgres")
            self.url = f"postgresql://{embedded_postgres.USER}@{quote(server.socket_dir, safe='')}:{server.port}/{self.name}"
            self.conninfo = server.conninfo(self.name)
            self._drop_leftover_databases()  # of earlier runs that failed; nobody else uses this server
        else:
            parts = urlsplit(self.external_url)
            self._admin = self.external_url
            self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
            self.conninfo = self.url
        with psycopg.connect(self._admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def close(self, *, drop: bool) -> None:
        """Close the runner's connection; drop the run's database if asked; stop the embedded
        server if this run started it; release the lock."""
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        try:
            if drop and self._admin:
                with psycopg.connect(self._admin, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            if self.embedded and self.started_server:
                from notifications_project import embedded_postgres

                embedded_postgres.stop(self.pgdata)
            self._release_lock()

    def _take_lock(self) -> None:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.pgdata.with_name(self.pgdata.name + ".lock"), "w")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"another chaos run holds {self.pgdata} (waited {self.lock_timeout:.0f}s); "
                        "give this one another --pgdata"
                    ) from None
                time.sleep(0.5)

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def _drop_leftover_databases(self) -> None:
        with psycopg.connect(self._admin, autocommit=True, connect_timeout=10) as conn:
            names = [row[0] for row in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (RUN_DB_PREFIX,))]
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # --- the fault ------------------------------------------------------------------------------

    def restart(self, down_seconds: float = 0.0) -> float:
        """Restart the server, every session cut; returns the seconds it was unavailable.

        `down_seconds` 0: a fast restart (embedded_postgres.restart), well under a second.
        More: stop it (fast), stay down that long, start it again, as in a failover that takes
        its time; the embedded module's own command line does each step, in a process of its
        own (pgserver caches a server's handle per process, so this one could not start it
        again). With CHAOS_DB_RESTART_CMD, that command is the whole restart."""
        started = time.monotonic()
        if self.embedded and down_seconds <= 0:
            from notifications_project import embedded_postgres

            embedded_postgres.restart(self.pgdata)
        elif self.embedded:
            self._embedded_command("stop")
            time.sleep(down_seconds)
            self._embedded_command("start")
        elif self.restart_cmd:
            subprocess.run(self.restart_cmd, shell=True, check=True, timeout=120)
        else:
            raise RuntimeError("no way to restart this server: set CHAOS_DB_RESTART_CMD")
        return time.monotonic() - started

    def _embedded_command(self, action: str) -> None:
        env = {**os.environ, "NOTIFY_EMBEDDED_PGDATA": str(self.pgdata)}
        done = subprocess.run([sys.executable, "-m", "notifications_project.embedded_postgres", action],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"embedded_postgres {action} failed: {done.stdout}{done.stderr}")

    # --- the runner's own queries ---------------------------------------------------------------

    def query(self, sql: str, params: Any = None, *, retry_for: float = 60.0) -> list[tuple]:
        """Run one statement (autocommit) and return its rows. Reconnects and retries for up
        to `retry_for` seconds: the runner's own view must survive the restarts it causes."""
        deadline = time.monotonic() + retry_for
        wait = 0.2
        while True:
            with self._conn_lock:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=3)
                    cursor = self._conn.execute(sql, params)
                    return cursor.fetchall() if cursor.description else []
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                    if time.monotonic() > deadline:
                        raise
            time.sleep(wait)
            wait = min(2.0, wait * 2)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)
