"""The run's infrastructure on its hosts: PostgreSQL on `db`, PgBouncer on `pool`, HAProxy on
`lb`, and the Debian packages the last two come from.

- PostgreSQL: the embedded server's binaries (the pgserver wheel), a fresh data directory per
  run, listening on the db host's bridge address; trust authentication for the private
  subnet only. pg_ctl starts it as the user pgserver (PostgreSQL refuses to run as root).
- PgBouncer: transaction pooling for the API hosts (a server connection per transaction, so
  many API threads share few server connections); it cannot keep prepared statements across
  transactions, so the API hosts run with DATABASE_PREPARE_THRESHOLD=off. The dispatchers
  do not go through it: they LISTEN, which needs a session of their own.
- HAProxy: round robin over the API hosts, each checked with GET /readyz every 500 ms (down
  after two failures, up after two successes); a connection that fails is retried on the
  other host; when no host is ready it answers 503 with Retry-After, as the API does.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .network import SUBNET, Host

PACKAGES = {"pgbouncer": "pgbouncer", "haproxy": "haproxy"}
PG_USER = "pgserver"  # pgserver's own user, which it creates to run PostgreSQL as root
PG_PORT = 5432
POOL_PORT = 6432
LB_PORT = 8080


def ensure_packages() -> None:
    """Install PgBouncer and HAProxy from Debian's packages when they are missing."""
    missing = [package for command, package in PACKAGES.items() if not shutil.which(command)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise RuntimeError(f"{', '.join(missing)} missing, and no apt-get to install them with")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:  # stale package lists on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"could not install {', '.join(missing)}: {done.stderr.strip()[-500:]}")


def pg_bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


class Postgres:
    """The db host's server: `init()`, `start()`, `restart(down_seconds)`, `stop()`."""

    def __init__(self, host: Host, data_dir: Path):
        self.host = host
        self.data_dir = data_dir
        self.admin_url = f"postgresql://postgres@{host.address}:{PG_PORT}/postgres"

    def init(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        shutil.chown(self.data_dir, PG_USER, PG_USER)
        self._as_pg_user([pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                          "-E", "UTF8", "--no-instructions"], timeout=120)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\n# the cluster run\nlisten_addresses = '{self.host.address},127.0.0.1'\nport = {PG_PORT}\n"
                f"unix_socket_directories = '{self.data_dir}'\nmax_connections = 300\n"
                "shared_buffers = 256MB\ntimezone = 'UTC'\nlog_min_messages = warning\n"
            )
        with open(self.data_dir / "pg_hba.conf", "w") as hba:
            hba.write(f"local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all {SUBNET}.0/24 trust\n")

    def start(self) -> None:
        self._pg_ctl("start", "-l", str(self.data_dir / "server.log"))

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "fast")

    def restart(self, down_seconds: float) -> float:
        """Fast shutdown (every session cut), `down_seconds` down, start; seconds unavailable."""
        started = time.monotonic()
        self._pg_ctl("stop", "-m", "fast")
        time.sleep(down_seconds)
        self.start()
        return time.monotonic() - started

    def _pg_ctl(self, *args: str) -> None:
        self._as_pg_user([pg_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", *args], timeout=90)

    def _as_pg_user(self, command: list[str], *, timeout: float) -> None:
        argv = self.host.argv("runuser", "-u", PG_USER, "--", *command)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {done.stdout[-1000:]}{done.stderr[-2000:]}")


def pgbouncer_config(workdir: Path, *, host: Host, db: Host, pool_size: int) -> Path:
    """The pool host's pgbouncer.ini (and its users file); returns the config's path."""
    users = workdir / "pgbouncer-users.txt"
    users.write_text('"postgres" ""\n')
    config = workdir / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={db.address} port={PG_PORT}\n"
        "[pgbouncer]\n"
        f"listen_addr = {host.address}\nlisten_port = {POOL_PORT}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmax_client_conn = 2000\n"
        # A server connection that PostgreSQL's restart broke is replaced on its next use.
        "server_login_retry = 1\nserver_connect_timeout = 5\n"
        "log_connections = 0\nlog_disconnections = 0\n"
    )
    for path in (users, config):
        path.chmod(0o644)  # pgbouncer reads them as the user it switches to
    return config


def pgbouncer_argv(host: Host, config: Path) -> list[str]:
    # PgBouncer refuses to run as root: -u switches to the PostgreSQL user after startup.
    return host.argv(shutil.which("pgbouncer") or "pgbouncer", "-u", PG_USER, str(config))


def haproxy_config(workdir: Path, *, host: Host, api_hosts: list[Host], api_port: int) -> Path:
    """The lb host's haproxy.cfg; returns its path."""
    unavailable = workdir / "haproxy-503.http"
    body = '{"error": {"code": "unavailable", "message": "No API host is ready."}}'
    unavailable.write_text(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Cache-Control: no-cache\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    servers = "".join(
        f"    server {api.name} {api.address}:{api_port} check\n" for api in api_hosts
    )
    config = workdir / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 4000\n\n"
        "defaults\n    mode http\n"
        "    timeout connect 1s\n    timeout client 30s\n    timeout server 10s\n    timeout check 1s\n"
        # a connection refused or timed out is tried once more, on the other host
        "    retries 2\n    option redispatch 1\n"
        f"    errorfile 503 {unavailable}\n\n"
        f"frontend api\n    bind {host.address}:{LB_PORT}\n    default_backend api_hosts\n\n"
        "backend api_hosts\n    balance roundrobin\n    option http-keep-alive\n"
        "    option httpchk GET /readyz\n    http-check expect status 200\n"
        "    default-server inter 500ms fall 2 rise 2\n"
        f"{servers}"
    )
    return config


def haproxy_argv(host: Host, config: Path) -> list[str]:
    return host.argv(shutil.which("haproxy") or "haproxy", "-db", "-f", str(config))
