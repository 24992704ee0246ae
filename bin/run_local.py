"""`make run`: the whole service on this machine, until Ctrl-C.

Starts the embedded PostgreSQL (unless DATABASE_URL is set), applies migrations, runs the API
under gunicorn on $PORT (default 8000), the dispatchers and the housekeeping scheduler
(django-q2's qcluster), and prints a request to try. Ctrl-C stops them gracefully (in-flight
sends finish and are recorded, a running housekeeping batch commits), and stops the embedded
database if this run started it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent


def main() -> int:
    os.chdir(ROOT)
    port = os.environ.get("PORT", "8000")
    host = os.environ.get("HOST", "127.0.0.1")
    started_db = False
    if not os.environ.get("DATABASE_URL"):
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from notifications_project import embedded_postgres

        started_db = not embedded_postgres.is_running()
        server = embedded_postgres.ensure_running()
        print(f"Embedded PostgreSQL: {server.conninfo()} (data in {server.data_dir})")

    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], check=True)
    api_key = _dev_api_key()

    # Prometheus multiprocess mode: the API's workers and the dispatcher processes write their
    # metrics to one fresh directory, so that the API's /metrics covers them all.
    metrics_dir = ROOT / ".data" / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}

    # Own process groups: the terminal's Ctrl-C reaches only this script, which then stops
    # each child with SIGTERM, their graceful signal.
    api = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-c", "notifications_project/gunicorn.conf.py", "notifications_project.wsgi",
         "--bind", f"{host}:{port}", "--workers", os.environ.get("WEB_CONCURRENCY", "2"),
         "--graceful-timeout", "20", "--access-logfile", "-"],
        start_new_session=True, env=env,
    )
    dispatchers = subprocess.Popen(
        [sys.executable, "manage.py", "run_dispatchers", *os.environ.get("DISPATCHER_ARGS", "").split()],
        start_new_session=True, env=env,
    )
    # The scheduled housekeeping (retention, expired Idempotency-Keys, gone dispatchers):
    # django-q2's cluster with its broker in the same database.
    qcluster = subprocess.Popen([sys.executable, "manage.py", "qcluster"], start_new_session=True)
    children = {"API": api, "dispatchers": dispatchers, "qcluster": qcluster}

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    base = f"http://{host if host != '0.0.0.0' else '127.0.0.1'}:{port}"
    if _wait_until_up(f"{base}/healthz", children):
        _print_banner(base, api_key)
    else:
        stopping = True

    code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"\n{name} exited with code {child.returncode}; stopping everything.", file=sys.stderr)
                stopping, code = True, 1
        time.sleep(0.3)

    print("\nStopping: the API, the dispatchers and the qcluster finish what they are doing ...")
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        child.wait()
    if started_db:
        from notifications_project import embedded_postgres

        embedded_postgres.stop()
        print("Embedded PostgreSQL stopped.")
    print("Stopped.")
    return code


def _wait_until_up(url: str, children: dict, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children.values()):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _dev_api_key() -> str:
    """The API key of the client `dev`: NOTIFY_API_KEY if set, else one kept in .data/ so that
    it stays the same from run to run. Stored (hashed) in the database if it is not yet."""
    key = os.environ.get("NOTIFY_API_KEY")
    saved = ROOT / ".data" / "dev-api-key"
    if not key and saved.exists():
        key = saved.read_text().strip()
    if not key:
        key = "ntf_" + secrets.token_urlsafe(24)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(key + "\n")
        saved.chmod(0o600)
    subprocess.run([sys.executable, "manage.py", "create_api_key", "dev", "--key", key, "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    return key


def _print_banner(base: str, api_key: str) -> None:
    body = json.dumps({"channel": "email-log", "to": "alice@example.com", "subject": "Hello", "message": "It works."})
    auth = f"-H 'Authorization: Bearer {api_key}'"
    print(
        f"""
The notification service is running: API on {base}, dispatchers and housekeeping (qcluster) started.
API key of the client "dev": {api_key}   (set NOTIFY_API_KEY to choose it)

Send a notification:
  curl -si -X POST {base}/api/v1/notifications {auth} -H 'Content-Type: application/json' -d '{body}'

Then read it back, with its history (the Location header of the answer):
  curl -s {auth} {base}/api/v1/notifications/<id>

Channels: curl -s {auth} {base}/api/v1/channels
API documentation: {base}/api/docs/
Metrics (API and dispatchers): {base}/metrics   Probes: {base}/healthz {base}/readyz
Admin: {base}/admin/ (create the first admin user with: .venv/bin/python manage.py createsuperuser)
Statistics: {base}/admin/notifications/notification/stats/   (API: {base}/api/v1/stats)
Press Ctrl-C to stop.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
