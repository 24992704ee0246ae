"""The isolation check: a healthy channel keeps its throughput beside one whose provider hangs.

After the main load has drained, with the same dispatchers and the same provider process:
- "alone": a backlog of notifications for the channel `healthy` (the provider's clean path,
  which always answers ok, after 100 ms as a provider does: the channel's pace is its send
  threads', which is what a hanging channel beside it could take) goes in through the batch API; its throughput is the middle 90% of
  its sends over the time they took (sent_at, the database's clock);
- "beside": first a backlog for the channel `tarpit` (the provider's path that drips or never
  answers, so that every send runs to its deadline), until the dispatchers have as many tarpit
  sends in flight as they can take; then the same healthy backlog, timed the same way.
In the order alone, beside, beside, alone (the tarpit notifications are cancelled through the
API before the last), in one run on one machine; the ratio is the mean beside throughput over
the mean alone throughput. Each channel has send threads of its own in every
dispatcher, so a channel that hangs costs the others (almost) nothing.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from typing import Any, Callable
from urllib.parse import urlsplit

from .database import RunDatabase

HEALTHY, TARPIT = "healthy", "tarpit"
BATCH = 1000


class IsolationCheck:
    """Measures the healthy channel's throughput alone and beside the tarpit (see the module docstring)."""

    def __init__(self, *, api_base: str, api_key: str, database: RunDatabase, notifications: int,
                 tarpit_in_flight: int, send_timeout: float, rounds: int = 2, log: Callable[[str], None] = print):
        parts = urlsplit(api_base)
        self.host, self.port = parts.hostname, parts.port
        self.api_key = api_key
        self.database = database
        self.notifications = notifications
        self.tarpit_in_flight = tarpit_in_flight  # what the dispatchers can have in flight at once
        self.send_timeout = send_timeout  # the tarpit channel's deadline
        self.rounds = rounds
        self.log = log

    def run(self) -> dict[str, Any]:
        # Alone, beside, beside, alone: a drift of the machine's speed over the check (other
        # work on a shared host) weighs on both sides alike.
        alone = [self._healthy_throughput()]
        tarpit = self._fill_tarpit()
        beside = [self._healthy_throughput() for _ in range(self.rounds)]
        busy = self._tarpit_sending()
        self._cancel(tarpit)
        alone += [self._healthy_throughput() for _ in range(self.rounds - 1)]
        ratio = (sum(beside) / len(beside)) / (sum(alone) / len(alone))
        self.log(f"isolation: healthy alone {', '.join(f'{x:.0f}' for x in alone)}/s, beside the tarpit "
                 f"{', '.join(f'{x:.0f}' for x in beside)}/s ({busy} tarpit sends in flight at the end): {ratio:.3f}")
        return {"notifications_per_round": self.notifications, "rounds": self.rounds,
                "healthy_alone_per_s": [round(x, 1) for x in alone],
                "healthy_beside_tarpit_per_s": [round(x, 1) for x in beside],
                "tarpit_in_flight_target": self.tarpit_in_flight, "ratio": round(ratio, 3)}

    # --- the phases ---------------------------------------------------------------------------------

    def _healthy_throughput(self) -> float:
        """The dispatchers' rate on a healthy backlog: the middle 90% of its sends over the
        time they took, by the database's clock (sent_at). The first and last few are left
        out: how fast the API takes the backlog in, and a straggling last claim, are not what
        is measured."""
        ids = self._submit(HEALTHY, self.notifications)
        self._wait(lambda: self._count(ids, "sent") == len(ids), timeout=120, what="the healthy backlog sent")
        (seconds,) = self.database.query(
            "SELECT (percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at)) "
            "      - percentile_cont(0.05) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at)))::float8 "
            "FROM notification WHERE id = ANY(%s::uuid[])", [ids])[0]
        return 0.9 * len(ids) / max(seconds, 1e-3)

    def _fill_tarpit(self) -> list[str]:
        ids = self._submit(TARPIT, max(2 * self.tarpit_in_flight, 50))
        self._wait(lambda: self._tarpit_sending() >= self.tarpit_in_flight, timeout=30,
                   what=f"{self.tarpit_in_flight} tarpit sends in flight")
        # Past the first wave, whose sends all time out and retry together: the tarpit's
        # steady state is what the healthy channel lives beside.
        time.sleep(self.send_timeout + 1)
        return ids

    def _tarpit_sending(self) -> int:
        return self.database.query(
            "SELECT count(*) FROM outbox WHERE channel = %s AND sending", [TARPIT])[0][0]

    def _cancel(self, ids: list[str]) -> None:
        """Cancel every tarpit notification; one being sent is cancelled once its attempt ends."""
        pending = list(ids)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for nid in pending:
                self._post(f"/api/v1/notifications/{nid}/cancel", b"")
            final = {row[0] for row in self.database.query(
                "SELECT id::text FROM notification WHERE id = ANY(%s::uuid[]) "
                "AND status IN ('sent', 'failed', 'cancelled', 'expired')", [pending])}
            pending = [nid for nid in pending if nid not in final]
            if pending:
                time.sleep(0.5)
        if pending:
            raise RuntimeError(f"isolation: {len(pending)} tarpit notifications could not be cancelled")

    # --- the API and the database -----------------------------------------------------------------

    def _submit(self, channel: str, count: int) -> list[str]:
        ids: list[str] = []
        for start in range(0, count, BATCH):
            items = [{"channel": channel, "to": f"{channel}{start + i}@example.com", "message": f"{channel} {start + i}"}
                     for i in range(min(BATCH, count - start))]
            status, data = self._post("/api/v1/notifications/batch", json.dumps({"notifications": items}).encode(),
                                      key=f"isolation-{uuid.uuid4()}")
            if status != 202:
                raise RuntimeError(f"isolation: the batch API answered {status}: {data[:300]!r}")
            ids += json.loads(data)["ids"]
        return ids

    def _post(self, path: str, body: bytes, key: str | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _count(self, ids: list[str], status: str) -> int:
        return self.database.query("SELECT count(*) FROM notification WHERE id = ANY(%s::uuid[]) AND status = %s",
                                   [ids, status])[0][0]

    @staticmethod
    def _wait(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"isolation: timed out waiting for {what}")
            time.sleep(0.05)
