"""Intake over HTTP: single POSTs under wrk at 32 connections, and batch POSTs of 1,000.

Both go to gunicorn on 127.0.0.1 with the run's API key, to the `fake` channel (no recipient
rules, so validation is as cheap as the API's own). Nothing is dispatched meanwhile: intake is
measured alone.

What a single POST sends is its `body` (bench/wrk_post.lua and bench/loadgen.py build the same):
- "simple" (ingest_single_*): {"channel", "to", "subject": "Benchmark", "message": "benchmark
  message N"};
- "order": an order-shipped email written out by the client: its subject and text, plain;
- "template": the same order-shipped email from the template bench/templates.py creates:
  {"channel", "to", "template", "data": {name, order_id, items, total, url}}, rendered by the
  API (subject, text and HTML). "order" and "template" compare like with like
  (ingest_template_vs_plain).

ingest_throttled_vs_plain sends "simple" bodies to two servers that differ only in
NOTIFY_THROTTLE_RATE (bench/__main__.py, Run.ingest_throttled): what the fleet-wide rate
limit, counted in the enqueue statement, costs a single POST.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg

from . import loadgen

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"


@dataclass(frozen=True)
class SingleResult:
    per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    tool: str  # "wrk" or "python"
    notifies: int | None = None  # NOTIFY outbox received while measuring (the intake's debounce at work)


class NotifyCounter(threading.Thread):
    """Counts `NOTIFY outbox` during a measurement, on a LISTEN connection of its own: each one
    is a commit that took PostgreSQL's global notify lock (the intake debounces them)."""

    def __init__(self, conninfo: str):
        super().__init__(name="notify-counter", daemon=True)
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("LISTEN outbox")
        self.count = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for _ in self.conn.notifies(timeout=0.2):
                self.count += 1

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.conn.close()
        return self.count


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


@dataclass(frozen=True)
class Body:
    """What each single POST sends (see the module docstring)."""

    kind: str = "simple"  # "simple", "order" or "template"
    channel: str = "fake"
    template: str = ""  # the template's name, for "template"

    def env(self) -> dict[str, str]:
        """For bench/wrk_post.lua."""
        return {"BENCH_BODY": self.kind, "BENCH_CHANNEL": self.channel, "BENCH_TEMPLATE": self.template}


SIMPLE = Body()


def warm_up(*, port: int, api_key: str, seconds: int, connections: int, log_dir: Path, use_wrk: bool,
            body: Body = SIMPLE) -> None:
    """Untimed load first: each gunicorn worker loads its URLconf, views and serializers, and
    opens its database connection (and compiles a template), at its first requests."""
    if use_wrk:
        _wrk(port, api_key, seconds, connections, log_dir / f"wrk-warmup-{body.kind}.txt", body)
    else:
        loadgen.run(port=port, api_key=api_key, seconds=seconds, connections=connections, body=body)


def single(*, port: int, api_key: str, seconds: int, connections: int, log_dir: Path,
           listen_conninfo: str | None = None, use_wrk: bool | None = None, body: Body = SIMPLE,
           log_name: str = "wrk") -> SingleResult:
    """ingest_single_per_s and its p50/p99: wrk if installed (or if use_wrk), else the Python
    load generator; each request sends `body` (wrk's output goes to `log_name`.txt).

    With listen_conninfo, also counts the NOTIFYs that the measured requests sent."""
    use_wrk = wrk_available() if use_wrk is None else use_wrk
    counter = NotifyCounter(listen_conninfo) if listen_conninfo else None
    if counter:
        counter.start()
    try:
        if use_wrk:
            result = _wrk(port, api_key, seconds, connections, log_dir / f"{log_name}.txt", body)
        else:
            ok, errors, latencies, measured = loadgen.run(port=port, api_key=api_key, seconds=seconds,
                                                          connections=connections, body=body)
            if not latencies:
                raise RuntimeError(f"no request succeeded ({errors} errors)")
            result = SingleResult(per_s=ok / measured, p50_ms=percentile(latencies, 50) * 1000,
                                  p99_ms=percentile(latencies, 99) * 1000, requests=ok, errors=errors, tool="python")
    finally:
        notifies = counter.stop() if counter else None
    return replace(result, notifies=notifies)


def _wrk(port: int, api_key: str, seconds: int, connections: int, output: Path,
         body: Body = SIMPLE) -> SingleResult:
    # Two wrk threads: wrk is event-driven, and the machine has two cores to share with the
    # server; more threads would only take CPU from it.
    argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
            "--latency", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/api/v1/notifications"]
    done = subprocess.run(argv, capture_output=True, text=True,
                          env={**os.environ, "BENCH_API_KEY": api_key, **body.env()})
    output.write_text(done.stdout + done.stderr)
    line = next((l for l in done.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = json.loads(line.removeprefix("WRK_JSON "))
    # A non-2xx answer (status_errors) or a timeout is not an accepted notification. A read
    # error is gunicorn's sync worker closing the connection, which wrk counts after a
    # complete answer; it is not a lost request.
    errors = summary["status_errors"] + summary["timeouts"] + summary["connect_errors"]
    requests = summary["requests"]
    if requests == 0 or errors > 0.01 * requests:
        raise RuntimeError(f"wrk: {errors} errors in {requests} requests; see {output}")
    return SingleResult(per_s=(requests - errors) / (summary["duration_us"] / 1e6), p50_ms=summary["p50_us"] / 1000,
                        p99_ms=summary["p99_us"] / 1000, requests=requests, errors=errors, tool="wrk")


def batch(*, port: int, api_key: str, requests: int, clients: int, size: int = 1000) -> tuple[float, int]:
    """POST /api/v1/notifications/batch `requests` times, `clients` at a time.

    Returns (notifications accepted per second, accepted). The bodies are built before the
    clock starts, so the client's JSON encoding is not measured.
    """
    body = json.dumps({"notifications": [
        {"channel": "fake", "to": f"user{i}@example.com", "subject": "Benchmark", "message": f"batch message {i}"}
        for i in range(size)
    ]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    accepted = 0
    failures: list[str] = []
    lock = threading.Lock()
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]

    def client(count: int) -> None:
        nonlocal accepted
        for _ in range(count):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("POST", "/api/v1/notifications/batch", body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            finally:
                conn.close()
            with lock:
                if response.status == 202:
                    accepted += json.loads(payload)["count"]
                else:
                    failures.append(f"{response.status} {payload[:300]!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in per_client if n]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise RuntimeError(f"{len(failures)} batch requests failed, e.g. {failures[0]}")
    return accepted / elapsed, accepted


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a latency somebody really saw)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]
