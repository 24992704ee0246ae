"""An embedded PostgreSQL server for machines without one (used when DATABASE_URL is unset).

The `pgserver` package ships PostgreSQL binaries in a wheel. The server keeps its data under
`.data/pg` in the checkout and listens on a Unix socket only. It is shared: every process of the
project (API workers, dispatchers, tests, manage.py) finds the running server through its
`postmaster.pid`, and the first one to arrive starts it. It keeps running when they exit;
`python -m notifications_project.embedded_postgres stop` (and `make run` on Ctrl-C, when it
started it) stops it.

Importing the settings starts nothing: they take the server's address from `address()`, which
is known before the server runs. The entry points that use the database start it with
`ensure_running_if_used()` before their first connection: manage.py (every command but a few
that need no database), the WSGI module (gunicorn), the test session (tests/conftest.py) and
`make run` (bin/run_local.py).
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

# pgserver asks platformdirs for a runtime directory when it is imported, which warns on
# machines without a login session.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

# NOTIFY_EMBEDDED_PGDATA picks another data directory, i.e. another server: the chaos and
# benchmark runs use their own, so that restarting it disturbs nothing else.
DATA_DIR = Path(os.environ.get("NOTIFY_EMBEDDED_PGDATA") or Path(__file__).resolve().parent.parent / ".data" / "pg")
DATABASE_NAME = "notifications"
USER = "postgres"
# pgserver starts the server without a port, so it takes PostgreSQL's default (or PGPORT's,
# which SERVER_SETTINGS overrides). On a Unix socket the port only names the socket file
# (.s.PGSQL.5432 in the data directory): it never collides with a server listening on TCP.
PORT = 5432

# Server settings, written with ALTER SYSTEM (and the server restarted) whenever the running
# server has others: a new data directory, or a start under PGPORT. Each API worker and
# dispatcher thread holds a connection, so the default of 100 is too few for a local fleet
# plus a test run; the port is pinned so that `address()` knows it before the server starts.
SERVER_SETTINGS = {"max_connections": "300", "shared_buffers": "256MB", "port": str(PORT)}

# The longest Unix socket path that pgserver accepts (sizeof(sun_path)): beyond it, pgserver puts
# the socket in a runtime directory instead of the data directory.
_MAX_SOCKET_PATH = 108 if sys.platform.startswith("linux") else 104


@dataclass(frozen=True)
class EmbeddedServer:
    """Where the running embedded server listens."""

    socket_dir: str
    port: int
    data_dir: Path

    def conninfo(self, dbname: str = DATABASE_NAME) -> str:
        return f"host={self.socket_dir} port={self.port} user={USER} dbname={dbname}"


def is_running(data_dir: Path = DATA_DIR) -> bool:
    """Whether a server is running on `data_dir`, without starting one."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    return info is not None and info.is_running()


def address(data_dir: Path = DATA_DIR) -> EmbeddedServer:
    """Where the server on `data_dir` listens, or will listen once started; starts nothing.

    A running server's `postmaster.pid` says. Otherwise it follows from pgserver's choice of
    socket directory (`pgserver.utils.find_suitable_socket_dir`, which we mirror without its
    trial bind: a stray socket file could meet a server starting at that moment): the data
    directory itself, or, when the socket's path would be too long, a per-user runtime
    directory named by a hash of the data directory's path and inode. `ensure_running` checks
    that a server it starts listens there.
    """
    return _running_address(data_dir) or _expected_address(data_dir)


def ensure_running_if_used() -> EmbeddedServer | None:
    """Start the embedded server if this process's settings use it (DATABASE_URL unset, as in
    settings.py) and it does not run yet. With DATABASE_URL set, nothing: returns None."""
    if os.environ.get("DATABASE_URL"):
        return None
    return ensure_running()


def ensure_running(data_dir: Path = DATA_DIR) -> EmbeddedServer:
    """Start the embedded server unless it runs already; create the project's database."""
    import pgserver
    import psycopg
    from pgserver.postgres_server import PostgresServer

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    expected = None if is_running(data_dir) else _expected_address(data_dir)
    # cleanup_mode=None: the server outlives the process that started it, so that processes
    # started later (and in parallel) share it instead of each owning one.
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    info = server.get_postmaster_info()
    embedded = EmbeddedServer(socket_dir=str(info.socket_dir), port=info.port, data_dir=data_dir)

    with PostgresServer._lock:  # one process at a time configures a new server
        with psycopg.connect(embedded.conninfo("postgres"), autocommit=True) as conn:
            restart = any(conn.execute(f"SHOW {name}").fetchone()[0] != value
                          for name, value in SERVER_SETTINGS.items())
            if restart:
                for name, value in SERVER_SETTINGS.items():
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        if restart:
            _pg_ctl(data_dir, "restart", "-l", str(data_dir.resolve() / "log"))
            embedded = _running_address(data_dir) or embedded
    if expected is not None and embedded != expected:
        raise RuntimeError(
            f"the embedded PostgreSQL started on {embedded.conninfo()}, not on {expected.conninfo()} "
            "where the settings expect it (embedded_postgres.address() no longer matches pgserver)"
        )
    return embedded


def _running_address(data_dir: Path) -> EmbeddedServer | None:
    """The address in the running server's `postmaster.pid`, or None if no server runs."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    if info is None or not info.is_running():
        return None
    return EmbeddedServer(socket_dir=str(info.socket_dir), port=info.port, data_dir=data_dir)


def _expected_address(data_dir: Path) -> EmbeddedServer:
    """Where pgserver will put the socket of a server it starts on `data_dir`."""
    pgdata = data_dir.expanduser().resolve()
    socket_dir = pgdata
    if len(os.fsencode(pgdata / f".s.PGSQL.{PORT}")) > _MAX_SOCKET_PATH:
        from pgserver.postgres_server import PostgresServer

        # The hash takes the directory's inode: create it (empty) as pgserver would.
        pgdata.mkdir(parents=True, exist_ok=True)
        path_hash = hashlib.sha256(f"{pgdata}-{pgdata.stat().st_ino}".encode()).hexdigest()[:10]
        socket_dir = PostgresServer.runtime_path / path_hash
    return EmbeddedServer(socket_dir=str(socket_dir), port=PORT, data_dir=data_dir)


def restart(data_dir: Path = DATA_DIR) -> None:
    """Restart the server (fast shutdown: every session is cut, as in a database failover)."""
    _pg_ctl(data_dir, "restart", "-m", "fast", "-l", str(data_dir.resolve() / "log"))


def stop(data_dir: Path = DATA_DIR) -> bool:
    """Stop the embedded server (fast shutdown: sessions are closed, nothing committed is lost)."""
    if not is_running(data_dir):
        return False
    _pg_ctl(data_dir, "stop", "-m", "fast")
    return True


def _pg_ctl(data_dir: Path, *args: str) -> None:
    from pgserver._commands import pg_ctl

    # pgserver runs PostgreSQL as the user 'pgserver' when we are root.
    user = "pgserver" if os.geteuid() == 0 else None
    pg_ctl(["-w", *args], pgdata=data_dir.resolve(), user=user, timeout=60)


if __name__ == "__main__":  # python -m notifications_project.embedded_postgres start|stop|status
    action = sys.argv[1] if len(sys.argv) > 1 else "status"
    if action == "start":
        print(f"embedded PostgreSQL running: {ensure_running().conninfo()}")
    elif action == "stop":
        print("embedded PostgreSQL stopped" if stop() else "embedded PostgreSQL was not running")
    elif action == "status":
        running = is_running()
        print("running" if running else "not running")
        sys.exit(0 if running else 3)
    else:
        sys.exit(f"usage: python -m notifications_project.embedded_postgres start|stop|status, not {action!r}")
