"""python -m cluster: one cluster run; prints the results table and writes them as JSON.

Exit code: 0 when every check passed, 1 when one failed, 2 when the run could not be made
(3 when this machine cannot host it: not root, no `ip netns`), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import fields
from pathlib import Path

from .network import NetworkError, preflight
from .report import table
from .runner import Config, Runner, write_results

CANNOT_HOST = 3


def parse_args(argv: list[str] | None = None) -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m cluster", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Prove the scale-out across hosts: network namespaces, a load balancer, a pooler, network faults.")
    add = parser.add_argument
    add("--notifications", type=int, default=defaults.notifications, help="notifications submitted through lb")
    add("--duration", type=float, default=None, help="seconds of load (default: N/150, at least 30)")
    add("--api-workers", type=int, default=defaults.api_workers, help="gunicorn workers per API host")
    add("--threads", type=int, default=defaults.threads, help="send threads per dispatcher process")
    add("--batch-size", type=int, default=defaults.batch_size, help="rows a dispatcher claims at once")
    add("--lease-seconds", type=float, default=defaults.lease_seconds)
    add("--drain-lease-seconds", type=float, default=defaults.drain_lease_seconds, help="the measured drains' lease")
    add("--rtt-ms", type=float, default=defaults.rtt_ms, help="round trip added between the dispatchers and db")
    add("--drain-rows", type=int, default=defaults.drain_rows, help="rows per drain leg")
    add("--drain-pairs", type=int, default=defaults.drain_pairs, help="direct/delayed drain leg pairs")
    add("--throughput-seconds", type=float, default=defaults.throughput_seconds, help="seconds per API leg")
    add("--throughput-pairs", type=int, default=defaults.throughput_pairs, help="via lb/direct API leg pairs")
    add("--seed", type=int, default=None, help="random seed (printed and saved)")
    add("--json", type=Path, default=defaults.json_path, dest="json_path", help="where to write the results")
    args = vars(parser.parse_args(argv))
    return Config(**{f.name: args[f.name] for f in fields(Config) if f.name in args})


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        preflight()
    except NetworkError as exc:
        print(f"make cluster cannot run on this machine: {exc}", file=sys.stderr, flush=True)
        return CANNOT_HOST

    def interrupt(signum, frame):
        # SIGTERM (a test's timeout, a CI cancel) cleans up like Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    results = Runner(config).run()
    write_results(results, config.json_path)
    print(table(results), flush=True)
    print(f"results: {config.json_path}", flush=True)
    if results.get("error") == "interrupted":
        return 130
    return {"pass": 0, "fail": 1}.get(results["result"], 2)


if __name__ == "__main__":
    sys.exit(main())
