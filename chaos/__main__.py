"""python -m chaos: one chaos run; prints the results table and writes them as JSON.

Exit code: 0 when every check passed, 1 when one failed, 2 when the run could not be made,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from .provider import FaultRates
from .runner import DEFAULT_PGDATA, DEFAULT_RESULTS, DEFAULT_WORKDIR, Config, Runner, print_table, write_results


def parse_args(argv: list[str] | None = None) -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Prove at-least-once delivery under faults: real processes, a database restart, a misbehaving provider.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--notifications", type=int, default=defaults.notifications, help="notifications to submit through the API")
    add("--dispatchers", type=int, default=defaults.dispatchers, help="dispatcher supervisors (one process each)")
    add("--threads", type=int, default=defaults.threads, help="send threads per dispatcher process")
    add("--batch-size", type=int, default=defaults.batch_size, help="rows a dispatcher claims at once")
    add("--api-workers", type=int, default=defaults.api_workers, help="gunicorn workers")
    add("--clients", type=int, default=defaults.clients, help="concurrent client threads of the load driver")
    add("--duration", type=float, default=None, help="seconds over which the load is spread (default: N/150, at least 20)")
    add("--kills", type=int, default=defaults.kills, help="SIGKILLs (alternately a dispatcher process and a whole supervisor)")
    add("--sigterms", type=int, default=defaults.sigterms, help="graceful stops (SIGTERM) of a supervisor")
    add("--sigstops", type=int, default=defaults.sigstops, help="stalls (SIGSTOP past the lease, then SIGCONT)")
    add("--db-restarts", type=int, default=defaults.db_restarts, help="restarts of the PostgreSQL server")
    add("--db-down-seconds", type=float, default=defaults.db_down_seconds,
        help="how long a database restart keeps the server down (0: a fast restart)")
    add("--lease-seconds", type=float, default=defaults.lease_seconds)
    add("--send-timeout", type=float, default=defaults.send_timeout, help="the provider channel's timeout")
    add("--tarpit-timeout", type=float, default=defaults.tarpit_timeout,
        help="the isolation check's tarpit channel's timeout (at most the lease - 0.5 s)")
    add("--retry-base", type=float, default=defaults.retry_base, help="OUTBOX_RETRY_BASE_SECONDS")
    add("--retry-cap", type=float, default=defaults.retry_cap, help="OUTBOX_RETRY_CAP_SECONDS")
    add("--max-attempts", type=int, default=defaults.max_attempts, help="OUTBOX_MAX_ATTEMPTS")
    add("--drain-timeout", type=float, default=defaults.drain_timeout, help="longest wait for the queue to drain")
    add("--isolation-notifications", type=int, default=defaults.isolation_notifications,
        help="healthy notifications per measurement of the isolation check (0 skips it)")
    for name, value in asdict(FaultRates()).items():
        add(f"--{name.replace('_', '-')}", type=float, default=value, dest=name, help="provider fault rate per request")
    add("--seed", type=int, default=None, help="random seed (printed and saved, to replay a run's plan)")
    add("--json", type=Path, default=DEFAULT_RESULTS, dest="json_path", help="where to write the results")
    add("--workdir", type=Path, default=DEFAULT_WORKDIR, help="logs, channels file and pids file of the run")
    add("--pgdata", type=Path, default=DEFAULT_PGDATA, help="data directory of the run's own embedded PostgreSQL")
    add("--keep-db", action="store_true", help="keep the run's database (it is dropped after a passing run)")
    add("--lock-timeout", type=float, default=defaults.lock_timeout,
        help="seconds to wait while another run uses the same --pgdata")
    args = parser.parse_args(argv)
    if args.tarpit_timeout + 0.5 > args.lease_seconds or args.send_timeout + 0.5 > args.lease_seconds:
        parser.error("--send-timeout and --tarpit-timeout must be at most --lease-seconds - 0.5")
    if args.notifications < 1 or args.dispatchers < 2:
        parser.error("--notifications must be >= 1 and --dispatchers >= 2 (one is killed while others work)")
    rates = FaultRates(**{name: getattr(args, name) for name in asdict(FaultRates())})
    return Config(
        notifications=args.notifications, dispatchers=args.dispatchers, threads=args.threads,
        batch_size=args.batch_size, api_workers=args.api_workers, clients=args.clients, duration=args.duration,
        kills=args.kills, sigterms=args.sigterms, sigstops=args.sigstops, db_restarts=args.db_restarts,
        db_down_seconds=args.db_down_seconds,
        lease_seconds=args.lease_seconds, send_timeout=args.send_timeout, tarpit_timeout=args.tarpit_timeout,
        retry_base=args.retry_base,
        retry_cap=args.retry_cap, max_attempts=args.max_attempts, drain_timeout=args.drain_timeout, rates=rates,
        isolation_notifications=args.isolation_notifications,
        seed=args.seed, json_path=args.json_path, workdir=args.workdir, pgdata=args.pgdata,
        # DATABASE_URL: the run's database is created on that server instead of the embedded one.
        database_url=os.environ.get("DATABASE_URL") or None,
        restart_cmd=os.environ.get("CHAOS_DB_RESTART_CMD") or None,
        keep_db=args.keep_db, lock_timeout=args.lock_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)

    def interrupt(signum, frame):
        # SIGTERM (a test's timeout, a CI cancel) cleans up like Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    results = Runner(config).run()
    write_results(results, config.json_path)
    print_table(results)
    print(f"results: {config.json_path}", flush=True)
    if results.get("error") == "interrupted":
        return 130
    return {"pass": 0, "fail": 1}.get(results["result"], 2)


if __name__ == "__main__":
    sys.exit(main())
