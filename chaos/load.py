"""The load driver: a careful client submitting notifications through the HTTP API.

It sends single (`POST /api/v1/notifications`) and batch (`POST /api/v1/notifications/batch`)
requests, each with its own Idempotency-Key, paced evenly over the load's duration from
several client threads. A request whose answer it did not get (connection refused or reset,
timeout) or that was answered 429/5xx is sent again with the same key and body, after the
answer's Retry-After or a short backoff, as a careful client does; the API then creates the
notifications once. Every acknowledged (2xx) notification id is recorded: those are what the
service has promised to deliver.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from channels.retry_after import parse_retry_after

# Answers after which the same request is sent again (with the same Idempotency-Key).
RETRYABLE_STATUSES = {429, 500, 502, 503, 504}
# A careful client honours Retry-After, within reason.
MAX_RETRY_AFTER = 10.0


@dataclass
class PlannedRequest:
    """One API request to make: its key and its notifications."""

    key: str
    kind: str  # "single" or "batch"
    items: list[dict[str, Any]]

    @property
    def path(self) -> str:
        return "/api/v1/notifications" if self.kind == "single" else "/api/v1/notifications/batch"

    def body(self) -> bytes:
        payload = self.items[0] if self.kind == "single" else {"notifications": self.items}
        return json.dumps(payload).encode()


@dataclass
class RequestOutcome:
    """What became of one planned request."""

    key: str
    kind: str
    size: int
    ids: list[str] = field(default_factory=list)  # acknowledged notification ids, in order
    acknowledged: bool = False
    http_attempts: int = 0
    replayed: bool = False  # the API answered from the Idempotency-Key (an earlier try committed)
    error: str = ""  # why it was never acknowledged


def plan_requests(count: int, *, rng: random.Random, channel: str = "chaos", single_share: float = 0.6,
                  max_batch: int = 20) -> list[PlannedRequest]:
    """Requests adding up to `count` notifications: `single_share` of them single requests,
    the rest batches of 2 to `max_batch` (many requests, so that faults meet requests)."""
    plan, made = [], 0
    while made < count:
        size = 1 if rng.random() < single_share else rng.randint(2, max_batch)
        size = min(size, count - made)
        items = [{"channel": channel, "to": f"user{made + i}@example.com", "message": f"chaos message {made + i}",
                  "metadata": {"seq": made + i}} for i in range(size)]
        plan.append(PlannedRequest(key=f"chaos-{uuid.UUID(int=rng.getrandbits(128))}",
                                   kind="single" if size == 1 and rng.random() < 0.9 else "batch", items=items))
        made += size
    return plan


class ApiStats:
    """Every HTTP answer (or its absence) the driver got, for the report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answers: Counter[str] = Counter()  # status code (or "connection_error", "timeout") -> count
        self.retries = 0
        self.max_latency = 0.0
        self.max_latency_503 = 0.0
        self.answers_503_without_retry_after = 0
        self.unexpected: list[str] = []  # samples of answers that should not happen

    def add(self, status: int | str, latency: float, *, retry_after: str | None = None, body: bytes = b"") -> None:
        with self._lock:
            self.answers[str(status)] += 1
            self.max_latency = max(self.max_latency, latency)
            if status == 503:
                self.max_latency_503 = max(self.max_latency_503, latency)
                if not retry_after:
                    self.answers_503_without_retry_after += 1
            if isinstance(status, int) and not (200 <= status < 300 or status in (429, 503)):
                if len(self.unexpected) < 20:
                    self.unexpected.append(f"{status}: {body[:300].decode(errors='replace')}")

    def count_unexpected(self) -> int:
        """5xx other than 503, 4xx other than 429, and 503 without Retry-After."""
        unexpected = sum(n for status, n in self.answers.items()
                         if status.isdigit() and not (200 <= int(status) < 300 or int(status) in (429, 503)))
        return unexpected + self.answers_503_without_retry_after

    def as_dict(self) -> dict[str, Any]:
        return {
            "answers": dict(sorted(self.answers.items())),
            "retries": self.retries,
            "max_latency_s": round(self.max_latency, 3),
            "max_latency_503_s": round(self.max_latency_503, 3),
            "answers_503_without_retry_after": self.answers_503_without_retry_after,
            "unexpected_answers": self.count_unexpected(),
            "unexpected_samples": self.unexpected,
        }


class LoadDriver:
    """Submits the planned requests over `duration` seconds from `clients` threads."""

    def __init__(self, *, base_url: str, api_key: str, plan: list[PlannedRequest], duration: float,
                 clients: int = 8, request_timeout: float = 15.0, give_up_after: float = 120.0, seed: int = 0):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.api_key = api_key
        self.plan = plan
        self.duration = duration
        self.clients = clients
        self.request_timeout = request_timeout
        self.give_up_after = give_up_after
        self.outcomes: list[RequestOutcome] = []
        self.stats = ApiStats()
        self.started_at = 0.0
        self.finished_at = 0.0
        self._next = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def run(self, stop: threading.Event) -> None:
        """Submit everything (or until `stop`); returns when every client thread is done."""
        self.started_at = time.monotonic()
        threads = [threading.Thread(target=self._client, args=(stop,), name=f"client-{i}", daemon=True)
                   for i in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            # Bounded: each request gives up after give_up_after; the pacing ends at `duration`.
            thread.join(timeout=self.duration + self.give_up_after + 60)
        self.finished_at = time.monotonic()

    def _client(self, stop: threading.Event) -> None:
        interval = self.duration / max(1, len(self.plan))
        while not stop.is_set():
            with self._lock:
                index, self._next = self._next, self._next + 1
            if index >= len(self.plan):
                return
            # Even pacing: request i goes out at i * interval, so faults meet a steady stream.
            stop.wait(max(0.0, self.started_at + index * interval - time.monotonic()))
            if stop.is_set():
                return
            outcome = self._submit(self.plan[index], stop)
            with self._lock:
                self.outcomes.append(outcome)

    def _submit(self, request: PlannedRequest, stop: threading.Event) -> RequestOutcome:
        outcome = RequestOutcome(key=request.key, kind=request.kind, size=len(request.items))
        body = request.body()
        give_up = time.monotonic() + self.give_up_after
        failures = 0
        while not stop.is_set():
            outcome.http_attempts += 1
            if outcome.http_attempts > 1:
                with self.stats._lock:
                    self.stats.retries += 1
            status, headers, data = self._post(request.path, body, request.key)
            if isinstance(status, int) and 200 <= status < 300:
                answer = json.loads(data)
                outcome.ids = [answer["id"]] if request.kind == "single" else list(answer["ids"])
                outcome.acknowledged = True
                outcome.replayed = headers.get("idempotent-replayed") == "true"
                return outcome
            if isinstance(status, int) and status not in RETRYABLE_STATUSES:
                outcome.error = f"HTTP {status}: {data[:200].decode(errors='replace')}"
                return outcome  # a refusal is final: retrying the same request cannot change it
            failures += 1
            retry_after = parse_retry_after(headers.get("retry-after"))
            wait = min(MAX_RETRY_AFTER, retry_after) if retry_after is not None else \
                self._rng.uniform(0, min(3.0, 0.2 * 2 ** failures))
            if time.monotonic() + wait > give_up:
                outcome.error = f"gave up after {outcome.http_attempts} tries (last: {status})"
                return outcome
            stop.wait(wait)
        outcome.error = outcome.error or "stopped"
        return outcome

    def _post(self, path: str, body: bytes, key: str) -> tuple[int | str, dict[str, str], bytes]:
        """One HTTP try: (status or "connection_error"/"timeout", lower-cased headers, body)."""
        started = time.monotonic()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.request_timeout)
        try:
            connection.request("POST", path, body=body, headers={
                "Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json",
                "Idempotency-Key": key,
            })
            response = connection.getresponse()
            data = response.read()
            headers = {name.lower(): value for name, value in response.getheaders()}
            self.stats.add(response.status, time.monotonic() - started, retry_after=headers.get("retry-after"), body=data)
            return response.status, headers, data
        except TimeoutError:
            self.stats.add("timeout", time.monotonic() - started)
            return "timeout", {}, b""
        except (OSError, http.client.HTTPException):
            self.stats.add("connection_error", time.monotonic() - started)
            return "connection_error", {}, b""
        finally:
            connection.close()
