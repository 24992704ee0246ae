"""Wake-up by LISTEN/NOTIFY: the intake sends NOTIFY outbox when it commits new work."""

from __future__ import annotations

import logging
import threading
from typing import Callable

import psycopg
from django.db import connection

from .backoff import Backoff

logger = logging.getLogger("outbox.listen")

CHANNEL = "outbox"


def conninfo() -> str:
    """A libpq connection string for the default database, from Django's settings."""
    db = connection.settings_dict
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": str(db["PORT"]) if db.get("PORT") else None,
        **{k: v for k, v in db.get("OPTIONS", {}).items() if k in {"connect_timeout", "sslmode"}},
    }
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


class OutboxListener(threading.Thread):
    """Holds a LISTEN connection and calls `on_notify` for each notification.

    It reconnects by itself after losing the database, and calls `on_notify` once after each
    (re)connection, since notifications sent while it was away are lost.
    """

    def __init__(self, *, on_notify: Callable[[], None], stop: threading.Event):
        super().__init__(name="listener", daemon=True)
        self.on_notify = on_notify
        self.stop_event = stop

    def run(self) -> None:
        backoff = Backoff()
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(conninfo(), autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff.reset()
                    self.on_notify()
                    while not self.stop_event.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.on_notify()
            except psycopg.Error as exc:
                wait = backoff.next()
                logger.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, wait)
                self.stop_event.wait(wait)
