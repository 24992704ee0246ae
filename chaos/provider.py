"""A misbehaving provider: an HTTP server that records every delivery and injects faults.

    python -m chaos.provider --port 8765 --rate-5xx 0.04 --rate-429 0.03 ...

`POST /send` with `{"id": notification id, "attempt": n, "pid": sender}` is one delivery
attempt. Each request
draws one outcome from the configured rates:

| outcome          | the provider ...                                   | recorded as delivered |
|------------------|----------------------------------------------------|-----------------------|
| ok               | answers 200 `{"id": provider id}` after a latency  | yes                   |
| 5xx              | answers 503 (it refused the message)               | no                    |
| 429              | answers 429 with `Retry-After`                     | no                    |
| drop             | resets the connection without an answer            | no                    |
| slow             | processes it, answers 200 only after `slow_seconds`| yes                   |
|                  | (longer than the send timeout: the sender gives up)|                       |
| accepted_error   | processes it, then answers 500                     | yes                   |
| 4xx              | answers 422 (a permanent refusal; off by default)  | no                    |

Hostile answers, below what any provider should send:

| outcome          | the provider ...                                    | delivered |
|------------------|-----------------------------------------------------|-----------|
| nul_id           | answers 200 with an id holding a NUL and a lone surrogate | yes |
| bad_error        | answers 500 with an error text of NULs, lone surrogates and 50 kB | no |
| huge_body        | answers 200 with a 10 MB body                       | yes       |
| bad_json         | answers 200 with a body that is not JSON            | yes       |
| drip             | sends its status line, then a header line every 0.5 s, forever | yes |
| endless          | answers 200 with a body that never ends             | yes       |
| blackhole        | reads the request and never answers                 | no        |
| huge_headers     | answers 200 with a 1 MB header                      | yes       |

The first requests take every hostile answer once (one in ten, in turn), so that a short run
meets each of them whatever the rates draw.

Two more paths serve the isolation check (chaos.isolation): `POST /clean/send` always answers
ok ("clean_ok") after `--clean-latency-ms` (a provider's usual 100 ms: the healthy channel's
pace is then its threads', not the machine's), `POST /tarpit/send` never answers in time (alternately "tarpit_drip" and
"tarpit_blackhole"; not delivered).

"slow" and "accepted_error" are the provider-side sources of duplicates that at-least-once
allows: the provider has the message, the dispatcher believes the send failed and retries.

`GET /requests` returns every request received (the runner reads it at the end);
`GET /health` answers 200. Nothing here imports Django: the provider is a separate process,
like a real provider.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOSTILE = ("nul_id", "bad_error", "huge_body", "bad_json", "drip", "endless", "blackhole", "huge_headers")
FAULTS = ("5xx", "429", "drop", "slow", "accepted_error", "4xx", *HOSTILE)
# Outcomes after which the provider holds the message (a delivery, for the lost/duplicate count).
ACCEPTED = ("ok", "slow", "accepted_error", "nul_id", "huge_body", "bad_json", "drip", "endless", "huge_headers")
# Of those, the ones whose 2xx the sender sees (it records the notification as sent).
ANSWERED_2XX = ("ok", "nul_id", "huge_body", "bad_json", "endless")
# The provider took the message, but the sender saw an error or no answer (it sends again).
ACCEPTED_UNSEEN = ("slow", "accepted_error", "drip", "huge_headers")
DRIP_SECONDS = 0.5
HOSTILE_HOLD_SECONDS = 60.0  # the longest a drip, an endless body or a blackhole lasts


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per request; the rest are answered "ok"."""

    rate_5xx: float = 0.04
    rate_429: float = 0.03
    rate_drop: float = 0.03
    rate_slow: float = 0.01
    rate_accepted_error: float = 0.02
    rate_4xx: float = 0.0
    rate_nul_id: float = 0.004
    rate_bad_error: float = 0.004
    rate_huge_body: float = 0.002
    rate_bad_json: float = 0.004
    rate_drip: float = 0.003
    rate_endless: float = 0.002
    rate_blackhole: float = 0.003
    rate_huge_headers: float = 0.002

    def __post_init__(self) -> None:
        rates = list(asdict(self).values())
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1: {asdict(self)}")

    def draw(self, roll: float) -> str:
        """The outcome for a uniform roll in [0, 1)."""
        for fault in FAULTS:
            roll -= getattr(self, f"rate_{fault}")
            if roll < 0:
                return fault
        return "ok"


class Recorder:
    """Every request received, in arrival order, shared by the handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[list[Any]] = []
        self._next_id = 0

    def record(self, notification_id: str, attempt: int, outcome: str, sender: int) -> str:
        """Store one request; returns the provider message id given to it."""
        with self._lock:
            self._next_id += 1
            provider_id = f"prov-{self._next_id}"
            # A compact row: [time, notification id, attempt, outcome, provider id, sender pid].
            # Wall-clock time: the checks compare it with the database's timestamps (one host).
            self._requests.append([time.time(), notification_id, attempt, outcome, provider_id, sender])
        return provider_id

    def snapshot(self) -> list[list[Any]]:
        with self._lock:
            return list(self._requests)


class ProviderServer(ThreadingHTTPServer):
    """The HTTP server with its fault configuration and recorder."""

    daemon_threads = True  # a slow answer must not hold up shutdown
    allow_reuse_address = True
    # Dispatchers open many connections at once; the default backlog of 5 would make the
    # kernel drop SYNs, turning into connect timeouts that are not faults we chose.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], *, rates: FaultRates, latency_ms: tuple[float, float],
                 slow_seconds: float, retry_after: float, seed: int | None, clean_latency_ms: float = 100.0):
        super().__init__(address, ProviderHandler)
        self.rates = rates
        self.latency = (latency_ms[0] / 1000, latency_ms[1] / 1000)
        self.slow_seconds = slow_seconds
        self.clean_latency = clean_latency_ms / 1000
        self.retry_after = retry_after
        self.recorder = Recorder()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._drawn = 0
        self._tarpit_turn = 0
        self._each_hostile = [fault for fault in HOSTILE if getattr(rates, f"rate_{fault}") > 0]

    def draw(self) -> tuple[str, float]:
        """An outcome and a latency for one request."""
        with self._rng_lock:
            self._drawn += 1
            if self._each_hostile and self._drawn % 10 == 0:
                return self._each_hostile.pop(0), self._rng.uniform(*self.latency)
            return self.rates.draw(self._rng.random()), self._rng.uniform(*self.latency)

    def draw_tarpit(self) -> str:
        with self._rng_lock:
            self._tarpit_turn += 1
            return "tarpit_drip" if self._tarpit_turn % 2 else "tarpit_blackhole"


class ProviderHandler(BaseHTTPRequestHandler):
    server: ProviderServer
    protocol_version = "HTTP/1.0"  # one request per connection, as the channel makes them

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        pass  # thousands of requests: the recorder is the log

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, {"status": "ok"})
        elif self.path == "/requests":
            self._answer(200, {"fields": ["time", "id", "attempt", "outcome", "provider_id", "pid"],
                               "requests": self.server.recorder.snapshot()})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        profile = {"/send": "faults", "/clean/send": "clean", "/tarpit/send": "tarpit"}.get(self.path)
        if profile is None:
            self._answer(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            payload = json.loads(self.rfile.read(min(length, 65536)))
            notification_id, attempt = str(payload["id"]), int(payload.get("attempt", 0))
            sender = int(payload.get("pid", 0))
        except (ValueError, KeyError, TypeError):
            self._answer(400, {"error": "expected {\"id\", \"attempt\"}"})
            return
        if profile == "clean":
            outcome, latency = "clean_ok", self.server.clean_latency
        elif profile == "tarpit":
            outcome, latency = self.server.draw_tarpit(), 0.0
        else:
            outcome, latency = self.server.draw()
        provider_id = self.server.recorder.record(notification_id, attempt, outcome, sender)
        if outcome == "drop":
            # RST instead of an answer: SO_LINGER 0 makes close() abort the connection.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if outcome in HOSTILE or outcome.startswith("tarpit_"):
            self._hostile(outcome.removeprefix("tarpit_"), provider_id)
            return
        if outcome == "slow":
            time.sleep(self.server.slow_seconds)  # the sender has timed out by now
        else:
            time.sleep(latency)
        if outcome in ("ok", "slow", "clean_ok"):
            self._answer(200, {"id": provider_id})
        elif outcome == "accepted_error":
            self._answer(500, {"error": "internal error after accepting the message"})
        elif outcome == "5xx":
            self._answer(503, {"error": "unavailable"})
        elif outcome == "429":
            self._answer(429, {"error": "rate limited"}, {"Retry-After": f"{self.server.retry_after:g}"})
        else:  # 4xx
            self._answer(422, {"error": "recipient refused"})

    def _hostile(self, outcome: str, provider_id: str) -> None:
        """The hostile answers, written byte by byte where HTTP's rules are broken."""
        self.close_connection = True
        status_line = b"HTTP/1.1 200 OK\r\n"
        try:
            if outcome == "nul_id":
                self._answer(200, {"id": f"{provider_id}\u0000\ud800"})
            elif outcome == "bad_error":
                self._answer(500, {"error": "refused \u0000\ud800\udfff " + "z" * 50_000})
            elif outcome == "huge_body":
                self._answer(200, {"id": provider_id, "padding": "x" * (10 * 1024 * 1024)})
            elif outcome == "bad_json":
                self._raw(status_line + b"Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{not json")
            elif outcome == "huge_headers":
                self._raw(status_line + b"X-Huge: " + b"h" * (1024 * 1024) + b"\r\nContent-Length: 0\r\n\r\n")
            elif outcome == "drip":
                self._raw(status_line)
                self._until_the_sender_leaves(lambda: self._raw(b"X-Drip: 1\r\n"), every=DRIP_SECONDS)
            elif outcome == "endless":
                self._raw(status_line + b"Content-Type: application/json\r\n\r\n{\"id\": \"")
                chunk = b"x" * 65536
                self._until_the_sender_leaves(lambda: self._raw(chunk), every=0)
            elif outcome == "blackhole":
                self.connection.settimeout(HOSTILE_HOLD_SECONDS)
                self.connection.recv(1)  # returns when the sender closes its end (or the hold ends)
        except OSError:
            pass  # the sender gave up: the point of most of these answers

    def _raw(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    @staticmethod
    def _until_the_sender_leaves(write, *, every: float) -> None:
        """Write until the sender closes the connection (the write fails), for a bounded time."""
        ends = time.monotonic() + HOSTILE_HOLD_SECONDS
        while time.monotonic() < ends:
            write()
            if every:
                time.sleep(every)

    def _answer(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the sender gave up (a slow answer): nothing to do


def is_test_address(host: str | None) -> bool:
    """Loopback, or a private address (the cluster run's test hosts): never a public one."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def _private_address(text: str) -> str:
    if not is_test_address(text):
        raise argparse.ArgumentTypeError(f"{text!r} is neither loopback nor a private address")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos.provider", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", type=_private_address,
                        help="loopback, or a private address (the cluster run's test hosts): never a public one")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    for fault, default in asdict(FaultRates()).items():
        parser.add_argument(f"--{fault.replace('_', '-')}", type=float, default=default, dest=fault)
    parser.add_argument("--latency-ms", type=float, nargs=2, default=(2.0, 20.0), metavar=("MIN", "MAX"),
                        help="answer latency range of normal answers")
    parser.add_argument("--slow-seconds", type=float, default=3.0, help="latency of a 'slow' answer")
    parser.add_argument("--clean-latency-ms", type=float, default=100.0, help="latency of every answer on /clean/send")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of a 429, in seconds")
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates = FaultRates(**{name: getattr(args, name) for name in asdict(FaultRates())})
    server = ProviderServer((args.host, args.port), rates=rates, latency_ms=tuple(args.latency_ms),
                            slow_seconds=args.slow_seconds, retry_after=args.retry_after, seed=args.seed,
                            clean_latency_ms=args.clean_latency_ms)

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"chaos provider listening on {args.host}:{server.server_address[1]} rates={asdict(rates)}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
