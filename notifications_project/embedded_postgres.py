"""An embedded PostgreSQL server for machines without one (used when DATABASE_URL is unset).

The `pgserver` package ships PostgreSQL binaries in a wheel. The server keeps its data under
`.data/pg` in the checkout and listens on a Unix socket only. It is shared: every process of the
project (API workers, dispatchers, tests, manage.py) finds the running server through its
`postmaster.pid`, and the first one to arrive starts it. It keeps running when they exit;
`python -m notifications_project.embedded_postgres stop` (and `make run` on Ctrl-C, when it
started it) stops it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# NOTIFY_EMBEDDED_PGDATA picks another data directory, i.e. another server: the chaos and
# benchmark runs use their own, so that restarting it disturbs nothing else.
DATA_DIR = Path(os.environ.get("NOTIFY_EMBEDDED_PGDATA") or Path(__file__).resolve().parent.parent / ".data" / "pg")
DATABASE_NAME = "notifications"
USER = "postgres"

# Settings applied once to a new data directory. Each API worker and dispatcher thread holds a
# connection, so the default of 100 is too few for a local fleet plus a test run.
SERVER_SETTINGS = {"max_connections": "300", "shared_buffers": "256MB"}


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


def ensure_running(data_dir: Path = DATA_DIR) -> EmbeddedServer:
    """Start the embedded server unless it runs already; create the project's database."""
    import pgserver
    import psycopg
    from pgserver.postgres_server import PostgresServer

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives the process that started it, so that processes
    # started later (and in parallel) share it instead of each owning one.
    server = pgserver.get_server(data_dir, cleanup_mode=None)
    info = server.get_postmaster_info()
    embedded = EmbeddedServer(socket_dir=str(info.socket_dir), port=info.port, data_dir=data_dir)

    with PostgresServer._lock:  # one process at a time configures a new server
        with psycopg.connect(embedded.conninfo("postgres"), autocommit=True) as conn:
            if conn.execute("SHOW max_connections").fetchone()[0] != SERVER_SETTINGS["max_connections"]:
                for name, value in SERVER_SETTINGS.items():
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                restart = True
            else:
                restart = False
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        if restart:
            _pg_ctl(data_dir, "restart", "-l", str(data_dir.resolve() / "log"))
    return embedded


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
    import sys
    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
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
