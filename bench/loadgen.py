"""A Python load generator for single POSTs, used only when wrk is not installed.

Several processes (so that the client's own GIL is not the bottleneck), each with a few
threads, each thread one closed-loop connection: send, wait for the answer, send again, on
a new connection for each request (wrk keeps its connections open: a lower bound again). It is slower than wrk per request sent, so on a 2-core
machine it takes more CPU from the server: figures from it are a lower bound, and the
results' notes say when it was used.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import threading
import time
from typing import Any


def request_body(body: Any, to: str, n: int) -> str:
    """The JSON of request `n` for a bench.ingest.Body (bench/wrk_post.lua builds the same)."""
    if body.kind == "simple":
        return json.dumps({"channel": body.channel, "to": to, "subject": "Benchmark",
                           "message": f"benchmark message {n}"})
    data = {"name": f"User {n}", "order_id": f"A-{n}", "items": n % 9 + 1, "total": f"{n % 200}.50 EUR",
            "url": f"https://shop.example.com/track/A-{n}"}
    if body.kind == "template":
        return json.dumps({"channel": body.channel, "to": to, "template": body.template, "data": data})
    # "order": what bench/templates.py's template renders as subject and text, written out
    return json.dumps({"channel": body.channel, "to": to, "subject": f"Your order {data['order_id']} has shipped",
                       "message": f"Hello {data['name']},\n\nyour order {data['order_id']} ({data['items']} items, "
                                  f"{data['total']}) is on its way.\nTrack it at {data['url']}.\n"})


def _worker(port: int, api_key: str, body: Any, seconds: float, threads: int,
            seed: int) -> tuple[int, int, list[float]]:
    """One process: `threads` closed loops for `seconds`; returns (ok, errors, latencies in s)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    ok, errors, latencies = 0, 0, []

    def loop(tid: int) -> None:
        nonlocal ok, errors
        n = 0
        mine: list[float] = []
        good = bad = 0
        while time.monotonic() < deadline:
            n += 1
            payload = request_body(body, f"user{seed}-{tid}-{n}@example.com", n)
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/api/v1/notifications", body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status == 202:
                    good += 1
                    mine.append(time.monotonic() - started)
                else:
                    bad += 1
            except OSError:
                bad += 1
        with lock:
            ok += good
            errors += bad
            latencies.extend(mine)

    pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return ok, errors, latencies


def run(*, port: int, api_key: str, seconds: float, connections: int, body: Any,
        processes: int = 4) -> tuple[int, int, list[float], float]:
    """`connections` concurrent closed loops over `processes` processes for `seconds`, each
    request sending `body` (a bench.ingest.Body).

    Returns (ok, errors, latencies in seconds, seconds measured)."""
    per_process = max(1, connections // processes)
    ctx = multiprocessing.get_context("spawn")  # nothing of the harness's state (DB connections) is inherited
    with ctx.Pool(processes) as pool:
        parts = pool.starmap(_worker, [(port, api_key, body, seconds, per_process, i) for i in range(processes)])
    ok = sum(p[0] for p in parts)
    errors = sum(p[1] for p in parts)
    latencies = [lat for p in parts for lat in p[2]]
    # Each process's loops run for `seconds` from its own start (process start-up is not counted).
    return ok, errors, latencies, seconds
