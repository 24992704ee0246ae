"""Fixtures of every test (tests/README.md says how the suite is laid out).

The PostgreSQL server (the embedded one, unless DATABASE_URL names another) is started only
when a test first asks for the database, so that `pytest tests/unit` starts none.

Dispatcher and API tests start `manage.py run_dispatchers` and gunicorn as real OS processes
against the test database; they use `transactional_db`, so that what a test writes is committed
and visible to those processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from notifications_project import embedded_postgres
from tests.helpers import ROOT, ApiProcess, DispatcherProcess, database_url, free_port, make_api_client, wait_until
from tests.provider_standins import drop_proxy_variables
from tests.provider_standins.email import BrevoStandIn, smtp_sink
from tests.provider_standins.slack import SlackStandIn
from tests.provider_standins.twilio_sms import TwilioStandIn


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):
    """Start the embedded PostgreSQL (DATABASE_URL unset) before pytest-django creates the test
    database: importing the settings only says where it listens."""
    embedded_postgres.ensure_running_if_used()


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


# --- real processes on the test database ----------------------------------------------------------


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
        with open(log_path, "w") as log:
            popen = subprocess.Popen(
                [sys.executable, "manage.py", "run_dispatchers", *args],
                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        process = DispatcherProcess(popen, log_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.kill_all()


@pytest.fixture
def start_api(transactional_db, tmp_path):
    """Start the API under gunicorn with the project's gunicorn settings (as `make run` and the
    image do) against the test database, once every worker has booted and /healthz answers;
    each is stopped at teardown (SIGTERM, then SIGKILL of its process group)."""
    started: list[ApiProcess] = []

    def start(*, workers: int = 2, env: dict | None = None, args: tuple[str, ...] = ()) -> ApiProcess:
        port = free_port()
        log_path = tmp_path / f"gunicorn-{len(started)}.log"
        full_env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "w") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "notifications_project/gunicorn.conf.py",
                 "notifications_project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), *args],
                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        api = ApiProcess(popen, port, log_path, workers)
        started.append(api)
        wait_until(api.ready, timeout=30, interval=0.1, message="gunicorn to answer")
        return api

    yield start
    for api in started:
        api.stop()


# --- provider stand-ins (tests/provider_standins/) ---------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch):
    """Loopback traffic only: no proxy from the environment may carry it elsewhere (the SDKs
    route every request through HTTP(S)_PROXY when set)."""
    drop_proxy_variables(monkeypatch)


@pytest.fixture
def twilio():
    with TwilioStandIn() as standin:
        yield standin


@pytest.fixture
def slack():
    with SlackStandIn() as standin:
        yield standin


@pytest.fixture
def brevo():
    with BrevoStandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def smtp_server():
    """An SMTP server (aiosmtpd) on loopback: (its controller, its MailSink)."""
    with smtp_sink() as server:
        yield server
