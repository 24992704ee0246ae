"""Helpers shared by the tests (not a test module: nothing here is collected).

Themed helpers live beside this one: `tests/api_helpers.py` (the API's URLs and error format),
`tests/provider_standins/` (loopback servers that play the providers), `tests/channel_backends.py`
(channel backends that only the tests configure). The fixtures are in `tests/conftest.py`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pytest
from django.db import connection
from rest_framework.test import APIClient

from chaos.processes import children_of, kill_groups
from notifications.auth import api_key_create
from notifications.ids import new_notification_id
from notifications.models import ApiClient, Notification, NotificationEvent
from outbox import store
from outbox.models import OutboxEntry

ROOT = Path(__file__).resolve().parent.parent


# --- waiting and the network ------------------------------------------------------------------


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


def free_port() -> int:
    """A loopback port with nothing behind it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


# --- the test database --------------------------------------------------------------------------


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


def enqueue_one(channel: str, to: str, message: str, client: str = "tests", **fields) -> str:
    """Enqueue one notification for API client `client`; returns its id."""
    nid = new_notification_id()
    notification = store.NewNotification(id=nid, channel=channel, recipient=to, message=message, **fields)
    store.enqueue([notification], client_id=tenant(client).pk)
    return str(nid)


def claim(limit: int = 10, *, dispatcher: str = "d1", lease: float = 60, channels=("fake", "email-log"),
          start: bool = False) -> list[store.Delivery]:
    """Claim due rows as a dispatcher does; with `start`, also START them (as it does right
    before sending), which must find every claimed row startable."""
    deliveries = store.claim(dispatcher=dispatcher, limit=limit, lease_seconds=lease, channels=channels)
    if start and deliveries:
        startable = store.start(deliveries, dispatcher=dispatcher)
        assert startable == {d.outbox_id for d in deliveries}
    return deliveries


def row_counts() -> tuple[int, int, int]:
    """(notifications, history events, outbox rows)."""
    return Notification.objects.count(), NotificationEvent.objects.count(), OutboxEntry.objects.count()


def history(notification_id) -> list[NotificationEvent]:
    """A notification's history, oldest first."""
    return list(NotificationEvent.objects.filter(notification_id=notification_id).order_by("created_at", "id"))


def status_of(nid: str) -> str:
    return Notification.objects.get(pk=nid).status


def count(status: str) -> int:
    """How many notifications have `status`."""
    return Notification.objects.filter(status=status).count()


def wait_for_status(nid: str, status: str, message: str, timeout: float = 20):
    return wait_until(lambda: status_of(nid) == status, timeout=timeout, message=message)


def wait_until_settled(ids, message: str, timeout: float = 30):
    """Wait until every notification of `ids` is sent or failed."""
    ids = list(ids)
    return wait_until(
        lambda: Notification.objects.filter(pk__in=ids, status__in=("sent", "failed")).count() == len(ids),
        timeout=timeout, message=message,
    )


# --- dispatcher processes -------------------------------------------------------------------------


def fast_retries(base: str, cap: str, max_attempts: str | None = None) -> dict:
    """Dispatcher environment for quick retries."""
    env = {"OUTBOX_RETRY_BASE_SECONDS": base, "OUTBOX_RETRY_CAP_SECONDS": cap}
    if max_attempts is not None:
        env["OUTBOX_MAX_ATTEMPTS"] = max_attempts
    return env


def fake_channel(channels_file, **options) -> Path:
    """A channels file (written by the `channels_file` fixture) whose channel "fake" is the fake
    backend with `options`."""
    rendered = ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in options.items())
    return channels_file(f'[channels.fake]\nbackend = "channels.backends.fake.FakeChannel"\noptions = {{ {rendered} }}\n')


def start_dispatcher(start_dispatchers, channels_file, toml: str, env: dict, threads: int | None = None):
    """Write `toml` as the channels file and start one dispatcher process on it."""
    path = channels_file(toml)
    args = ("--processes", "1", *(("--threads", str(threads)) if threads else ()))
    return start_dispatchers(*args, channels_file=path, env=env)


class DispatcherProcess:
    """A `manage.py run_dispatchers` supervisor and its children, started by a test in a
    session (process group) of its own. Process handling is chaos/processes.py's."""

    def __init__(self, popen: subprocess.Popen, log_path: Path):
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def children(self) -> list[int]:
        """PIDs of the (live) dispatcher processes under the supervisor."""
        return children_of(self.pid)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill_all(self) -> None:
        """SIGKILL the supervisor and every dispatcher at once: a host lost."""
        kill_groups([self.pid])
        self.popen.wait(timeout=10)

    def wait(self, timeout: float = 30) -> int:
        return self.popen.wait(timeout=timeout)


# --- the API under gunicorn ------------------------------------------------------------------------


class ApiProcess:
    """The API under gunicorn (the project's gunicorn settings), started by a test in a session
    of its own, on 127.0.0.1:`port`."""

    def __init__(self, popen: subprocess.Popen, port: int, log_path: Path, workers: int):
        self.popen = popen
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.workers = workers

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None,
                timeout: float = 20) -> tuple[int, dict, dict]:
        """One JSON request on a connection of its own: (status, headers, decoded body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            data = response.read()
            return response.status, dict(response.getheaders()), json.loads(data) if data else {}
        finally:
            conn.close()

    def ready(self) -> bool:
        """Every worker booted and /healthz answers (fails the test if gunicorn exited)."""
        if self.popen.poll() is not None:
            pytest.fail(f"gunicorn exited with {self.popen.returncode}:\n{self.log()}")
        if self.log().count("Booting worker") < self.workers:
            return False
        try:
            http_get(f"{self.url}/healthz")
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (the master stops its workers), then SIGKILL of the whole group if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        kill_groups([self.popen.pid])  # the master if it lingers, and workers that outlived it
        self.popen.wait(timeout=10)
