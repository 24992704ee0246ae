"""An open-loop load generator for POSTs: request i leaves at start + i / (rate / per_request),
each a single notification or (per_request > 1) a batch of that many.

wrk is closed loop (each connection sends its next request when the previous answer has come),
so it measures how fast the API can go, not how it behaves at a given rate. This one keeps a
schedule, as a population of independent clients would: a slow answer does not delay the
requests after it. One asyncio loop in the harness's process, its requests on a pool of
keep-alive connections (HTTP/1.1, as a service's HTTP client keeps them): a request takes an
idle connection, or opens one.

The schedule can only be kept while fewer than MAX_IN_FLIGHT requests are waiting for their
answers: past that the API is not taking the load (its listen queue is filling up) and the
next requests wait for a free slot, which is recorded as their lateness. The result says what
rate was really offered and accepted, so a figure measured at a lower rate than asked is
never mistaken for the rate asked.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from .ingest import percentile

# Requests at once, at most. gunicorn's listen queue holds 2,048 connections; a few hundred
# waiting is already a second of work for the API at its single-POST rate.
MAX_IN_FLIGHT = 256
# A request that leaves more than this after its time counts as late (the loop's own timer
# resolution and a busy machine's scheduling account for a few milliseconds).
LATE_MS = 20


@dataclass
class Offered:
    """What the generator did: the accepted notifications and how well it kept its schedule."""

    accepted: dict[str, float]  # notification id -> time.time() of its 202
    requests: int
    errors: list[str]
    seconds: float  # from the first request's departure to the last one's
    answered_seconds: float  # from the first departure to the last answer
    late_ms: list[float] = field(repr=False)  # per request: how long after its time it left
    per_request: int = 1  # notifications per request


    @property
    def offered_per_s(self) -> float:
        """Notifications per second."""
        requests_per_s = (self.requests - 1) / self.seconds if self.seconds > 0 else float(self.requests)
        return requests_per_s * self.per_request

    @property
    def accepted_per_s(self) -> float:
        return len(self.accepted) / self.answered_seconds if self.answered_seconds > 0 else float(len(self.accepted))

    @property
    def late_p99_ms(self) -> float:
        return percentile(self.late_ms, 99)

    def kept_up(self, rate: float) -> bool:
        """Whether the requests left on time (99% within LATE_MS) at 95% or more of `rate`."""
        return self.late_p99_ms <= LATE_MS and self.offered_per_s >= 0.95 * rate

    def details(self, prefix: str) -> dict[str, float | int]:
        """For results.json's details."""
        return {f"{prefix}_offered_per_s": self.offered_per_s, f"{prefix}_accepted_per_s": self.accepted_per_s,
                f"{prefix}_requests": self.requests, f"{prefix}_accepted": len(self.accepted),
                f"{prefix}_errors": len(self.errors), f"{prefix}_late_p50_ms": percentile(self.late_ms, 50),
                f"{prefix}_late_p99_ms": self.late_p99_ms,
                f"{prefix}_late_fraction": sum(ms > LATE_MS for ms in self.late_ms) / len(self.late_ms),
                f"{prefix}_max_in_flight": MAX_IN_FLIGHT, f"{prefix}_notifications_per_request": self.per_request}


def offer(*, port: int, api_key: str, rate: float, seconds: float, channel: str, per_request: int = 1) -> Offered:
    """POST rate * seconds notifications of `channel` to 127.0.0.1:`port` on schedule, `per_request`
    in each request (a batch POST when more than one); raises if more than 1% of the requests fail."""
    result = asyncio.run(_offer(port, api_key, rate / per_request, max(1, int(rate * seconds / per_request)), channel,
                                per_request))
    if len(result.errors) > 0.01 * result.requests:
        raise RuntimeError(f"{len(result.errors)} of {result.requests} POSTs failed, e.g. {result.errors[0]}")
    return result


async def _offer(port: int, api_key: str, rate: float, count: int, channel: str, per_request: int) -> Offered:
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    accepted: dict[str, float] = {}
    errors: list[str] = []
    late_ms = [0.0] * count
    departures = [0.0] * count
    last_answer = 0.0
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []  # keep-alive connections, free

    async def one(i: int, due: float) -> None:
        nonlocal last_answer
        async with slots:
            departures[i] = loop.time()
            late_ms[i] = (departures[i] - due) * 1000
            items = [{"channel": channel, "to": f"user{i}-{k}@example.com", "message": f"open loop {i}-{k}"}
                     for k in range(per_request)]
            body = json.dumps(items[0] if per_request == 1 else {"notifications": items}).encode()
            path = "/api/v1/notifications" if per_request == 1 else "/api/v1/notifications/batch"
            request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                       f"Content-Type: application/json\r\nAuthorization: Bearer {api_key}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            answer = connection = None
            # An idle connection the server closed meanwhile (keep-alive timeout) fails before
            # any answer: the request goes once more, on a new connection. Nothing else is retried.
            for attempt in range(2):
                reused = bool(idle) and attempt == 0
                try:
                    connection = idle.pop() if reused else await asyncio.open_connection("127.0.0.1", port)
                    answer = await asyncio.wait_for(_exchange(*connection, request), timeout=30)
                    break
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    if connection is not None:
                        connection[1].close()
                    if not reused:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        return
                except (OSError, asyncio.TimeoutError, ValueError) as exc:
                    if connection is not None:
                        connection[1].close()
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
            received = time.time()
            if b"connection: close" in answer.lower().partition(b"\r\n\r\n")[0]:
                connection[1].close()
            else:
                idle.append(connection)
            last_answer = max(last_answer, loop.time())
        head, _, payload = answer.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
        if status == b"202":
            answer_body = json.loads(payload)
            for notification_id in answer_body["ids"] if per_request > 1 else [answer_body["id"]]:
                accepted[notification_id] = received
        else:
            errors.append(f"{status.decode(errors='replace')} {payload[:200]!r}")

    start = loop.time() + 0.05
    tasks = []
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # Behind schedule (the loop was busy), the due requests go at once, one after another.
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    first = min(departures)
    return Offered(accepted=accepted, requests=count, errors=errors, seconds=max(departures) - first,
                   answered_seconds=last_answer - first, late_ms=late_ms, per_request=per_request)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One request and its whole answer (head and a Content-Length body) on a kept connection."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)
