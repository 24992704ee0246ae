"""Dispatcher heartbeats: each dispatcher process keeps its row of the `dispatcher` table fresh.

A daemon thread of the process upserts the row every OUTBOX_HEARTBEAT_SECONDS with the
dispatcher's counters, on the thread's own database connection (Django's connections are per
thread), and a last time with `stopped_at` when the dispatcher stops gracefully. A database
error costs one beat (it is logged, the connection is dropped, and the next beat reconnects);
it never stops the thread or the dispatcher. The admin shows a row without a heartbeat for
three intervals, and no `stopped_at`, as gone (outbox/admin.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection
from django.utils import timezone

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

logger = logging.getLogger("outbox.heartbeat")

# The heartbeat's time is the database's, so that "gone" compares like with like across hosts.
UPSERT = """
INSERT INTO dispatcher AS d (id, host, pid, channels, started_at, last_heartbeat_at, stopped_at,
                             in_flight, sent, failed, retried)
VALUES (%(id)s, %(host)s, %(pid)s, %(channels)s, %(started_at)s, now(),
        CASE WHEN %(stopped)s THEN now() END, %(in_flight)s, %(sent)s, %(failed)s, %(retried)s)
ON CONFLICT (id) DO UPDATE
SET last_heartbeat_at = now(),
    stopped_at = EXCLUDED.stopped_at,
    in_flight = EXCLUDED.in_flight,
    sent = EXCLUDED.sent,
    failed = EXCLUDED.failed,
    retried = EXCLUDED.retried
"""


def interval() -> float:
    return float(settings.OUTBOX_HEARTBEAT_SECONDS)


class Heartbeat(threading.Thread):
    """Writes `dispatcher`'s row now, then every `every` seconds, until stop()."""

    def __init__(self, dispatcher: Dispatcher, every: float | None = None):
        super().__init__(name="heartbeat", daemon=True)
        self.dispatcher = dispatcher
        self.every = every if every is not None else interval()
        self.started_at = timezone.now()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._stopping = threading.Event()
        self._failing = False

    def run(self) -> None:
        try:
            while True:
                self.beat()
                if self._stopping.wait(self.every):
                    break
            self.beat(stopped=True)
        finally:
            connection.close()  # this thread's connection

    def stop(self, timeout: float = 10.0) -> None:
        """Write the last heartbeat (final counters, stopped_at) and end the thread. Call it
        after the dispatcher's outcomes are recorded, so that the final counts are complete."""
        self._stopping.set()
        self.join(timeout)
        if self.is_alive():
            logger.warning("dispatcher %s: the last heartbeat did not finish within %.0fs", self.dispatcher.id, timeout)

    def beat(self, stopped: bool = False) -> bool:
        """Upsert the row once; True if it was written. Database errors are logged, not raised."""
        d = self.dispatcher
        params = {
            "id": d.id, "host": self.host, "pid": self.pid, "channels": sorted(d.channels),
            "started_at": self.started_at, "stopped": stopped, "in_flight": max(0, d._in_flight),
            "sent": d.sent, "failed": d.failed, "retried": d.retried,
        }
        try:
            with connection.cursor() as cursor:
                cursor.execute(UPSERT, params)
        except (DatabaseError, InterfaceError) as exc:
            # Logged at the first failure and at recovery, not at every beat of an outage.
            log = logger.debug if self._failing else logger.warning
            log("dispatcher %s: heartbeat failed (%s); retrying in %.1fs", d.id, exc, self.every)
            self._failing = True
            connection.close()  # reconnect at the next beat (the server may have restarted)
            return False
        except Exception:  # a bug here must not end the heartbeats
            logger.exception("dispatcher %s: heartbeat failed", d.id)
            connection.close()
            return False
        if self._failing:
            logger.info("dispatcher %s: heartbeats written again", d.id)
            self._failing = False
        return True
