"""Shared fixtures. Every test runs against the real PostgreSQL (embedded, or DATABASE_URL).

Dispatcher tests start `manage.py run_dispatchers` as real OS processes against the test
database; they use `transactional_db`, so that what a test writes is committed and visible
to those processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pytest
from django.db import connection
from rest_framework.test import APIClient

from notifications.auth import api_key_create
from notifications.ids import new_notification_id
from notifications.models import ApiClient
from notifications_project import embedded_postgres
from outbox import store

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Start the embedded PostgreSQL (DATABASE_URL unset) before pytest-django creates the test
    database: importing the settings only says where it listens."""
    if config.getoption("help") or config.getoption("version", 0):
        return
    embedded_postgres.ensure_running_if_used()


def database_url() -> str:
    """A DATABASE_URL for the test database, for processes that the tests start."""
    db = connection.settings_dict
    host = quote(db["HOST"] or "localhost", safe="")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{quote(db['USER'])}{password}@{host}{port}/{db['NAME']}"


def tenant(name: str = "tests") -> ApiClient:
    """The API client that test notifications belong to (created on first use)."""
    return ApiClient.objects.get_or_create(name=name)[0]


def make_api_client(client_name: str = "tests", **kwargs) -> APIClient:
    """DRF's test client, authenticated with a new API key of `client_name`."""
    api = APIClient(**kwargs)
    _, key = api_key_create(client=tenant(client_name))
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


def enqueue(count: int, channel: str = "fake", **fields) -> list[str]:
    """Enqueue `count` notifications straight into the outbox (no API); returns their ids."""
    items = [
        store.NewNotification(id=new_notification_id(), channel=channel, recipient=f"user{i}@example.com",
                              message=f"message {i}", **fields)
        for i in range(count)
    ]
    client_id = tenant().pk
    for start in range(0, count, 1000):
        store.enqueue(items[start:start + 1000], client_id=client_id)
    return [str(item.id) for item in items]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, message: str = ""):
    """Poll until `predicate()` is truthy; return its value, or fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


class DispatcherProcess:
    """A `manage.py run_dispatchers` supervisor and its children, started by a test."""

    def __init__(self, popen: subprocess.Popen, log_path: Path):
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def children(self) -> list[int]:
        """PIDs of the dispatcher processes under the supervisor."""
        try:
            out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        except FileNotFoundError:  # no pgrep: read /proc
            out = "\n".join(
                p.name for p in Path("/proc").iterdir()
                if p.name.isdigit() and _ppid(p) == self.pid
            )
        return sorted(int(pid) for pid in out.split())

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill_all(self) -> None:
        """SIGKILL the supervisor and every dispatcher: a host lost at once."""
        for pid in [self.pid, *self.children()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=10)

    def wait(self, timeout: float = 30) -> int:
        return self.popen.wait(timeout=timeout)


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@pytest.fixture
def api_client(db) -> APIClient:
    """An authenticated API client (of the client "tests")."""
    return make_api_client()


@pytest.fixture
def channels_file(tmp_path):
    """Write a channels TOML file for the processes a test starts; returns a writer."""

    def write(text: str) -> Path:
        path = tmp_path / "channels.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def start_dispatchers(transactional_db, tmp_path):
    """Start `run_dispatchers` processes against the test database; all are killed at teardown."""
    started: list[DispatcherProcess] = []

    def start(*args: str, channels_file: Path | None = None, env: dict | None = None) -> DispatcherProcess:
        log_path = tmp_path / f"dispatchers-{len(started)}.log"
        full_env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
            "PYTHONUNBUFFERED": "1",
            **({"NOTIFY_CHANNELS_FILE": str(channels_file)} if channels_file else {}),
            **(env or {}),
        }
        log = open(log_path, "w")
        popen = subprocess.Popen(
            [sys.executable, "manage.py", "run_dispatchers", *args],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
        process = DispatcherProcess(popen, log_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.kill_all()
