"""Dispatcher heartbeats: each dispatcher process keeps its row in the `dispatcher` table, and
the admin lists them as running, stopped or gone."""

from __future__ import annotations

import re
import signal
import socket
from datetime import timedelta

from django.contrib.admin.utils import quote
from django.db import connection
from django.utils import timezone

from outbox.models import Dispatcher
from tests.helpers import enqueue, wait_until

FAST_HEARTBEATS = {"OUTBOX_HEARTBEAT_SECONDS": "0.3"}


def db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def row_of(pid: int) -> Dispatcher | None:
    return Dispatcher.objects.filter(pid=pid).first()


def test_a_dispatcher_process_keeps_its_row_fresh_and_marks_it_stopped_on_sigterm(start_dispatchers):
    dispatchers = start_dispatchers("--processes", "1", "--channels", "fake,email-log", env=FAST_HEARTBEATS)
    (pid,) = wait_until(lambda: dispatchers.children(), message="the dispatcher process")
    row = wait_until(lambda: row_of(pid), message="its first heartbeat")
    assert row.id.startswith(f"{socket.gethostname()}:{pid}:")
    assert (row.host, row.channels, row.stopped_at, row.sent) == (socket.gethostname(), ["email-log", "fake"], None, 0)
    assert row.started_at <= row.last_heartbeat_at

    enqueue(20)
    wait_until(lambda: row_of(pid).sent == 20, message="the sent count reaches 20")
    first_beat = row_of(pid).last_heartbeat_at
    wait_until(lambda: row_of(pid).last_heartbeat_at > first_beat, timeout=5, message="a later heartbeat")
    assert db_now() - row_of(pid).last_heartbeat_at < timedelta(seconds=2)

    dispatchers.signal(signal.SIGTERM)
    assert dispatchers.wait() == 0
    row = row_of(pid)
    assert row.stopped_at is not None and row.stopped_at >= row.started_at
    assert (row.sent, row.failed, row.in_flight) == (20, 0, 0)
    assert Dispatcher.objects.count() == 1


def test_heartbeats_survive_losing_their_database_connection(start_dispatchers):
    dispatchers = start_dispatchers("--processes", "1", env=FAST_HEARTBEATS)
    (pid,) = wait_until(lambda: dispatchers.children(), message="the dispatcher process")
    wait_until(lambda: row_of(pid), message="its first heartbeat")
    with connection.cursor() as cursor:  # as a database restart or a network cut would
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE %s",
            ["%INSERT INTO dispatcher%"],
        )
        assert cursor.rowcount == 1
    wait_until(lambda: "heartbeat failed" in dispatchers.log(), timeout=5, message="the failed beat, logged")
    after_failure = db_now()
    wait_until(lambda: row_of(pid).last_heartbeat_at > after_failure, timeout=5, message="heartbeats again")
    # (The row is written, then the recovery is logged: wait for the line too.)
    wait_until(lambda: "heartbeats written again" in dispatchers.log(), timeout=5, message="the recovery, logged")
    assert dispatchers.popen.poll() is None and dispatchers.children() == [pid]


def test_admin_lists_dispatchers_as_running_stopped_or_gone(admin_client):
    now = timezone.now()
    common = {"channels": ["fake", "sms-log"], "started_at": now - timedelta(hours=2), "sent": 1234, "failed": 5}
    Dispatcher.objects.create(id="host-a:101:aaaa", host="host-a", pid=101, in_flight=7, **common)  # beats now
    Dispatcher.objects.create(id="host-b:202:bbbb", host="host-b", pid=202, stopped_at=now, **common)
    Dispatcher.objects.create(id="host-c:303:cccc", host="host-c", pid=303,
                              last_heartbeat_at=now - timedelta(minutes=5), **common)  # silent: gone

    page = admin_client.get("/admin/outbox/dispatcher/")
    assert page.status_code == 200
    rows = {host: row for host, row in _rows(page.content.decode())}
    assert "running" in rows["host-a"] and "stopped" in rows["host-b"] and "gone" in rows["host-c"]
    assert all(f">{value}<" in rows["host-a"] for value in ("101", "fake, sms-log", "7", "1234", "5"))

    for state, host in [("running", "host-a"), ("stopped", "host-b"), ("gone", "host-c")]:
        filtered = admin_client.get(f"/admin/outbox/dispatcher/?state={state}").content.decode()
        assert [h for h, _ in _rows(filtered)] == [host]

    detail = admin_client.get(f"/admin/outbox/dispatcher/{quote('host-c:303:cccc')}/change/")
    assert detail.status_code == 200 and "gone" in detail.content.decode()
    assert admin_client.get("/admin/outbox/dispatcher/add/").status_code == 403


def _rows(html: str):
    """(host, row html) of each row of an admin change list."""
    for chunk in html.split("<tr")[1:]:
        row = chunk.split("</tr>")[0]
        found = re.search(r'class="field-host"[^>]*>(?:<a [^>]*>)?([^<]*)', row)
        if found:
            yield found.group(1), row
