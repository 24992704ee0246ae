"""Wake-up latency: from the API's commit to the channel's send call, at 50 per second.

Dispatchers (2 processes, waiting on LISTEN outbox) are idle between notifications: at 50
per second and a few milliseconds per delivery, each notification finds them asleep, so what
is measured is the NOTIFY wake-up, the claim, the START and the hand-over to a send thread.

What is measured, per notification:
- start: the commit of the intake's transaction, as PostgreSQL recorded it
  (pg_xact_commit_timestamp of the transaction that inserted its 'queued' history event, a
  row that is never updated; the harness turns track_commit_timestamp on on its own server).
  On a DATABASE_URL server without track_commit_timestamp: the notification's created_at,
  i.e. the start of that transaction, which precedes the commit by the statement's duration,
  so the figure then overstates the latency a little;
- end: time.time() at the beginning of LatencyChannel.send in the dispatcher.
Both clocks are this machine's. The latency from the client's receipt of the 202 is given too
(in the details): it can be negative, when the send starts before the answer arrives.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .database import Server
from .ingest import percentile
from .servers import start_dispatchers


@dataclass(frozen=True)
class LatencyResult:
    origin: str  # what the latency is measured from: "commit" or "created_at"
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    from_response_p50_ms: float
    from_response_p99_ms: float


def measure(*, server: Server, dbname: str, env: dict[str, str], log_dir: Path, port: int, api_key: str,
            log_path: Path, seconds: int, rate: float, processes: int, commit_timestamps: bool) -> LatencyResult:
    log_path.write_text("")
    process = start_dispatchers(env, log_dir, "--processes", str(processes), "--channels", "latency",
                                name="dispatchers-latency")
    try:
        _wait_listening(server, dbname, processes, process)
        time.sleep(1.5)  # their first claims and polls are over: now they are idle
        accepted = _offer(port=port, api_key=api_key, count=max(1, int(seconds * rate)), rate=rate)
        sent = _wait_sends(log_path, len(accepted), timeout=30)
    finally:
        process.stop()
    query = ("SELECT notification_id::text, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
             "FROM notification_event WHERE status = 'queued' AND notification_id = ANY(%s::uuid[])"
             if commit_timestamps else
             "SELECT id::text, extract(epoch FROM created_at)::float8 FROM notification WHERE id = ANY(%s::uuid[])")
    with server.connect(dbname) as conn:
        committed = dict(conn.execute(query, (list(accepted),)).fetchall())
    from_commit = [(sent[nid] - committed[nid]) * 1000 for nid in accepted]
    from_response = [(sent[nid] - accepted[nid]) * 1000 for nid in accepted]
    return LatencyResult(origin="commit" if commit_timestamps else "created_at",
                         samples=len(from_commit), p50_ms=percentile(from_commit, 50),
                         p99_ms=percentile(from_commit, 99), max_ms=max(from_commit),
                         from_response_p50_ms=percentile(from_response, 50),
                         from_response_p99_ms=percentile(from_response, 99))


def _wait_listening(server: Server, dbname: str, processes: int, process, timeout: float = 60) -> None:
    """Until every dispatcher process holds its LISTEN connection."""
    deadline = time.monotonic() + timeout
    with server.connect(dbname) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND query = 'LISTEN outbox'").fetchone()[0] < processes:
            if not process.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"dispatchers not listening:\n{process.log_tail()}")
            time.sleep(0.05)


def _offer(*, port: int, api_key: str, count: int, rate: float) -> dict[str, float]:
    """POST `count` notifications at `rate` per second, open loop: request i leaves at
    start + i / rate whatever the previous answers took (a few sender threads, so that a slow
    answer does not delay the next request). Returns {id: time.time() of the 202}."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    accepted: dict[str, float] = {}
    failures: list[str] = []
    lock = threading.Lock()
    senders = 4
    start = time.monotonic() + 0.1

    def sender(first: int) -> None:
        for i in range(first, count, senders):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = json.dumps({"channel": "latency", "to": f"user{i}@example.com", "message": f"latency {i}"})
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", "/api/v1/notifications", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                received = time.time()
            finally:
                conn.close()
            with lock:
                if response.status == 202:
                    accepted[json.loads(payload)["id"]] = received
                else:
                    failures.append(f"{response.status} {payload[:200]!r}")

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} POSTs failed, e.g. {failures[0]}")
    return accepted


def _wait_sends(log_path: Path, count: int, timeout: float) -> dict[str, float]:
    """{notification id: send time} once the channel has logged `count` sends."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log_path.read_text().splitlines()
        if len(lines) >= count:
            # A redelivery (at least once) would log an id twice; the first send counts.
            sent: dict[str, float] = {}
            for line in lines:
                nid, at = line.split()
                sent.setdefault(nid, float(at))
            return sent
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(lines)} of {count} notifications were sent within {timeout}s")
        time.sleep(0.1)
