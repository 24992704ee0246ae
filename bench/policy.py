"""Rate budgets and circuit breakers, measured against a provider stand-in on loopback.

- Budget: the provider takes R sends a second (a token bucket of R, refilled at R/s) and
  answers 429 beyond; the channel has `rate_limit = "R/s"`; 2 `run_dispatchers` supervisors of
  2 processes each drain a backlog. Figures: the accepted sends per second over R
  (`budget_send_rate_ratio`) and the share of 429 answers (`budget_429_fraction`).
- Breaker: notifications flow to a provider that then answers 503 for a while (the outage),
  with a backlog due; the channel has `circuit_breaker = { failures = 5, cool_down = C }`.
  Figures: the provider's requests during the outage (`breaker_attempts_during_outage`) and
  the time from its recovery to its first success (`breaker_recovery_s`).

The stand-in is a thread of the benchmark process; the dispatchers reach it through the chaos
suite's provider channel (`chaos.provider_channel`, loopback only), which posts to
`<base_url>/send`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .database import Server
from .dispatch import enqueue_bulk
from .servers import start_dispatchers

RATE = 50  # R: what the provider takes a second
COOL_DOWN = 5.0
BREAKER_FAILURES = 5


class StandInProvider(ThreadingHTTPServer):
    """A provider on loopback: a token bucket of RATE (429 beyond), or 503 during an outage.
    Every request is kept as (time, status)."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.tokens, self.refilled = float(RATE), time.monotonic()
        self.outage = False
        self.requests: list[tuple[float, int]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self) -> int:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(RATE, self.tokens + (now - self.refilled) * RATE)
            self.refilled = now
            if self.outage:
                status = 503
            elif self.tokens >= 1:
                self.tokens -= 1
                status = 200
            else:
                status = 429
            self.requests.append((now, status))
            return status

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: StandInProvider

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = self.server.answer()
        body = json.dumps({"id": "p"} if status == 200 else {"error": "no"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)


@dataclass
class PolicyFigures:
    budget_send_rate_ratio: float | None
    budget_429_fraction: float | None
    breaker_attempts_during_outage: int | None
    breaker_recovery_s: float | None
    details: dict[str, Any]


def measure(*, server: Server, dbname: str, env: dict[str, str], run_dir: Path, budget_rows: int,
            outage_seconds: float, breaker_rows: int) -> PolicyFigures:
    """Both measurements, on database `dbname` (migrated, with the bench client)."""
    provider = StandInProvider()
    channels = run_dir / "policy-channels.toml"
    channels.write_text(
        f'[channels.limited]\nbackend = "chaos.provider_channel.ChaosProviderChannel"\n'
        f'options = {{ base_url = "{provider.url}", timeout = 2 }}\nrate_limit = "{RATE}/s"\n'
        f'[channels.flaky]\nbackend = "chaos.provider_channel.ChaosProviderChannel"\n'
        f'options = {{ base_url = "{provider.url}", timeout = 2 }}\n'
        f'circuit_breaker = {{ failures = {BREAKER_FAILURES}, cool_down = {COOL_DOWN} }}\n'
    )
    env = {**env, "NOTIFY_CHANNELS_FILE": str(channels), "OUTBOX_RETRY_BASE_SECONDS": "0.5",
           "OUTBOX_RETRY_CAP_SECONDS": "2", "OUTBOX_MAX_ATTEMPTS": "1000", "OUTBOX_POLL_INTERVAL_SECONDS": "0.2"}
    try:
        budget = _budget(server, dbname, env, run_dir, provider, budget_rows)
        with provider.lock:
            provider.requests.clear()
        breaker = _breaker(server, dbname, env, run_dir, provider, breaker_rows, outage_seconds)
    finally:
        provider.stop()
    return PolicyFigures(budget_send_rate_ratio=budget["ratio"], budget_429_fraction=budget["fraction_429"],
                         breaker_attempts_during_outage=breaker["attempts_during_outage"],
                         breaker_recovery_s=breaker["recovery_s"], details={"budget": budget, "breaker": breaker})


def _budget(server: Server, dbname: str, env: dict[str, str], run_dir: Path, provider: StandInProvider,
            rows: int) -> dict[str, Any]:
    enqueue_bulk(rows, channel="limited")
    fleet = [start_dispatchers(env, run_dir, "--processes", "2", "--channels", "limited", name=f"budget-{i}")
             for i in range(2)]
    try:
        _wait(lambda: _pending(server, dbname, "limited") == 0, timeout=rows / RATE * 3 + 60)
    finally:
        for process in fleet:
            process.stop(timeout=30)
    with provider.lock:
        requests = list(provider.requests)
    accepted = [at for at, status in requests if status == 200]
    throttled = sum(1 for _, status in requests if status == 429)
    # Accepted sends a second, between the first and the last: the steady rate (the first
    # second's full bucket on both sides is left out by starting after it).
    steady = [at for at in accepted if at >= accepted[0] + 1.0]
    rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else None
    return {"rows": rows, "requests": len(requests), "accepted": len(accepted), "answers_429": throttled,
            "accepted_per_s": round(rate, 2) if rate else None,
            "ratio": round(rate / RATE, 3) if rate else None,
            "fraction_429": round(throttled / len(requests), 4) if requests else None}


def _breaker(server: Server, dbname: str, env: dict[str, str], run_dir: Path, provider: StandInProvider,
             rows: int, outage_seconds: float) -> dict[str, Any]:
    fleet = [start_dispatchers(env, run_dir, "--processes", "2", "--channels", "flaky", name=f"breaker-{i}")
             for i in range(2)]
    try:
        time.sleep(3)  # the dispatchers are up (their claims find nothing yet)
        with provider.lock:
            provider.outage = True
            outage_started = time.monotonic()
        enqueue_bulk(rows, channel="flaky")  # a backlog due during the outage
        time.sleep(outage_seconds)
        with provider.lock:
            provider.outage = False
            recovered = time.monotonic()
        _wait(lambda: _pending(server, dbname, "flaky") == 0, timeout=rows / 10 + 120)
    finally:
        for process in fleet:
            process.stop(timeout=30)
    with provider.lock:
        requests = list(provider.requests)
    during = sum(1 for at, _ in requests if outage_started <= at < recovered)
    first_ok = min((at for at, status in requests if status == 200 and at >= recovered), default=None)
    return {"rows": rows, "outage_seconds": outage_seconds, "cool_down": COOL_DOWN, "failures": BREAKER_FAILURES,
            "attempts_during_outage": during,
            "recovery_s": round(first_ok - recovered, 2) if first_ok is not None else None}


def _pending(server: Server, dbname: str, channel: str) -> int:
    with server.connect(dbname) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE channel = %s", [channel]).fetchone()[0]


def _wait(predicate, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"policy: not drained within {timeout:.0f}s")
        time.sleep(0.1)

