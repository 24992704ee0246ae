"""Dispatcher heartbeats: each dispatcher process keeps its row of the `dispatcher` table fresh.

A daemon thread of the process upserts the row every OUTBOX_HEARTBEAT_SECONDS with the
dispatcher's counters and its problem, if it has one (it cannot record outcomes, so it claims
nothing), on the thread's own database connection (Django's connections are per
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
from dataclasses import dataclass
from typing import Callable

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection
from django.utils import timezone

from . import sql

logger = logging.getLogger("outbox.heartbeat")


@dataclass(frozen=True)
class DispatcherStats:
    """What a heartbeat reports of its dispatcher (Dispatcher.stats)."""

    in_flight: int
    sent: int
    failed: int
    retried: int
    problem: str  # why it claims nothing now, or ""


def interval() -> float:
    return float(settings.OUTBOX["HEARTBEAT_SECONDS"])


class Heartbeat(threading.Thread):
    """Writes the row of dispatcher `dispatcher_id` now, then every `every` seconds, until
    stop(). `stats()` gives the counters to write."""

    def __init__(self, *, dispatcher_id: str, channels: list[str], stats: Callable[[], DispatcherStats],
                 every: float | None = None):
        super().__init__(name="heartbeat", daemon=True)
        self.dispatcher_id = dispatcher_id
        self.channels = channels
        self.stats = stats
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
            logger.warning("dispatcher %s: the last heartbeat did not finish within %.0fs", self.dispatcher_id, timeout)

    def beat(self, stopped: bool = False) -> bool:
        """Upsert the row once; True if it was written. Errors are logged, not raised."""
        try:
            stats = self.stats()
            params = {
                "id": self.dispatcher_id, "host": self.host, "pid": self.pid, "channels": self.channels,
                "started_at": self.started_at, "stopped": stopped, "in_flight": max(0, stats.in_flight),
                "sent": stats.sent, "failed": stats.failed, "retried": stats.retried, "problem": stats.problem,
            }
            with connection.cursor() as cursor:
                cursor.execute(sql.HEARTBEAT, params)
        except (DatabaseError, InterfaceError) as exc:
            # Logged at the first failure and at recovery, not at every beat of an outage.
            log = logger.debug if self._failing else logger.warning
            log("dispatcher %s: heartbeat failed (%s); retrying in %.1fs", self.dispatcher_id, exc, self.every)
            self._failing = True
            connection.close()  # reconnect at the next beat (the server may have restarted)
            return False
        except Exception:  # a bug here must not end the heartbeats
            logger.exception("dispatcher %s: heartbeat failed", self.dispatcher_id)
            connection.close()
            return False
        if self._failing:
            logger.info("dispatcher %s: heartbeats written again", self.dispatcher_id)
            self._failing = False
        return True
