"""What runs on the `load` host: the chaos suite's load driver, and a throughput probe.

- `python -m cluster.load_host submit --plan plan.json --out outcomes.json ...`: the chaos
  load driver (chaos.load.LoadDriver: every request with its own Idempotency-Key, retried with
  it after a 429, a 5xx, a timeout or a broken connection) submits the planned requests
  through the load balancer, and writes what became of each, and every answer it got.
- `python -m cluster.load_host throughput --url URL [--url URL ...] --seconds S ...`: closed
  loops of single POSTs on keep-alive connections (each connection to one of the URLs, in
  turn) for S seconds from a few processes; prints the accepted rate as JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from chaos.load import LoadDriver, PlannedRequest


def submit(args: argparse.Namespace) -> int:
    plan = [PlannedRequest(**request) for request in json.loads(Path(args.plan).read_text())]
    driver = LoadDriver(base_url=args.base_url, api_key=args.api_key, plan=plan, duration=args.duration,
                        clients=args.clients, seed=args.seed)
    driver.run(threading.Event())
    result = {
        "seconds": round(driver.finished_at - driver.started_at, 3),
        "outcomes": [asdict(outcome) for outcome in driver.outcomes],
        "stats": driver.stats.as_dict(),
    }
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)
    return 0


def _closed_loops(urls: list[str], api_key: str, channel: str, seconds: float, threads: int, tag: int) -> tuple[int, int]:
    """One process: `threads` keep-alive closed loops; (accepted, failed)."""
    deadline = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def loop(index: int) -> None:
        parts = urlsplit(urls[index % len(urls)])
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        ok = failed = n = 0
        while time.monotonic() < deadline:
            n += 1
            body = json.dumps({"channel": channel, "to": f"t{tag}-{index}-{n}@example.com", "message": "throughput"})
            try:
                connection.request("POST", "/api/v1/notifications", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                if 200 <= response.status < 300:
                    ok += 1
                else:
                    failed += 1
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                failed += 1
                connection.close()
        connection.close()
        with lock:
            counts[0] += ok
            counts[1] += failed

    workers = [threading.Thread(target=loop, args=(tag * threads + i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return counts[0], counts[1]


def throughput(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with multiprocessing.Pool(args.processes) as pool:
        results = pool.starmap(_closed_loops, [(args.url, args.api_key, args.channel, args.seconds, args.threads, tag)
                                               for tag in range(args.processes)])
    elapsed = time.monotonic() - started
    accepted = sum(ok for ok, _ in results)
    print(json.dumps({"accepted": accepted, "failed": sum(failed for _, failed in results),
                      "seconds": round(elapsed, 3), "per_s": round(accepted / args.seconds, 1)}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.load_host")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("submit", help="the load driver")
    run.add_argument("--plan", required=True)
    run.add_argument("--out", required=True)
    run.add_argument("--base-url", required=True)
    run.add_argument("--api-key", default=os.environ.get("CLUSTER_API_KEY"), help="default: $CLUSTER_API_KEY")
    run.add_argument("--duration", type=float, required=True)
    run.add_argument("--clients", type=int, default=8)
    run.add_argument("--seed", type=int, default=0)
    probe = commands.add_parser("throughput", help="closed loops of single POSTs")
    probe.add_argument("--url", action="append", required=True)
    probe.add_argument("--api-key", default=os.environ.get("CLUSTER_API_KEY"), help="default: $CLUSTER_API_KEY")
    probe.add_argument("--channel", required=True)
    probe.add_argument("--seconds", type=float, default=5.0)
    probe.add_argument("--processes", type=int, default=2)
    probe.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    return submit(args) if args.command == "submit" else throughput(args)


if __name__ == "__main__":
    sys.exit(main())
