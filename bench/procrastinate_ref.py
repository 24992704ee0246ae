"""The peer reference: procrastinate (a PostgreSQL task queue for Python) draining no-op jobs.

Same server, same number of jobs as our drain, same number of worker processes (2) with the
same concurrency as our dispatcher threads (16 each), in a scratch database of its own.
procrastinate is given its best case, so that the ratio does not flatter us:
- the task is `async def noop()`: it runs on the worker's event loop, no thread hand-off;
- each worker's connection pool has as many connections as its concurrency, so no job waits
  for a connection (the default pool has 4);
- the jobs are deferred in bulk beforehand (Task.batch_defer_async, 1,000 per statement) and
  the table is vacuumed, as our outbox is;
- both workers start together: each opens its pool, says it is ready, and waits for the
  harness's go;
- jobs are kept after completion (procrastinate's default, delete_jobs="never"), as our
  history is kept.
The drain is timed with procrastinate's own event table, on the database's clock: from the
first 'started' event to the last 'succeeded' one (the events are written by triggers in the
same transactions as the status changes).

Run as `python -m bench.procrastinate_ref worker ...` for one worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import REPO
from .database import Server


def available() -> bool:
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("procrastinate")


def make_app(conninfo: str, pool_size: int):
    """A procrastinate App with one task, `noop`, on a pool of `pool_size` connections."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=conninfo, min_size=pool_size, max_size=pool_size))

    @app.task(name="noop")
    async def noop() -> None:
        """The job: nothing (as our fake channel with 0 ms latency does nothing)."""

    return app


@dataclass(frozen=True)
class ProcrastinateResult:
    jobs: int  # jobs that succeeded
    deferred: int
    seconds: float
    defer_seconds: float
    capped: bool  # stopped after max_seconds, before the queue was empty

    @property
    def per_s(self) -> float:
        return self.jobs / self.seconds


def run(*, server: Server, dbname: str, jobs: int, processes: int, concurrency: int, log_dir: Path,
        max_seconds: float) -> ProcrastinateResult:
    """Defer `jobs` no-op jobs into a fresh schema, drain them with `processes` workers.

    The workers are stopped (SIGTERM: graceful, running jobs finish) after `max_seconds` if
    the queue is not empty by then: procrastinate drains a few hundred jobs per second here,
    so 100,000 would not fit the run's time budget. The rate is then that of the part drained,
    from the same backlog.
    """
    conninfo = server.conninfo(dbname)
    defer_seconds = asyncio.run(_prepare(conninfo, jobs))
    with server.connect(dbname) as conn:
        conn.execute("VACUUM (ANALYZE) procrastinate_jobs, procrastinate_events")
    server.checkpoint(dbname)

    go = log_dir / "procrastinate.go"
    go.unlink(missing_ok=True)
    workers = []
    for i in range(processes):
        ready = log_dir / f"procrastinate-{i}.ready"
        ready.unlink(missing_ok=True)
        log = open(log_dir / f"procrastinate-{i}.log", "ab")
        workers.append((ready, subprocess.Popen(
            [sys.executable, "-m", "bench.procrastinate_ref", "worker", "--conninfo", conninfo,
             "--concurrency", str(concurrency), "--ready", str(ready), "--go", str(go)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)))
        log.close()
    try:
        deadline = time.monotonic() + 60
        while not all(ready.exists() for ready, _ in workers):
            if any(p.poll() is not None for _, p in workers) or time.monotonic() > deadline:
                raise RuntimeError(f"procrastinate workers did not start; see {log_dir}/procrastinate-*.log")
            time.sleep(0.02)
        go.touch()
        # wait=False: each worker exits once it finds no job left and its running jobs are done.
        finish_by = time.monotonic() + max_seconds
        capped = False
        for _, popen in workers:
            try:
                code = popen.wait(timeout=max(0.1, finish_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                capped = True
                break
            if code != 0:
                raise RuntimeError(f"a procrastinate worker exited with {code}; see {log_dir}/procrastinate-*.log")
        if capped:
            for _, popen in workers:
                if popen.poll() is None:
                    popen.send_signal(signal.SIGTERM)
            for _, popen in workers:
                popen.wait(timeout=30)
    finally:
        for _, popen in workers:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
    with server.connect(dbname) as conn:
        first, last, succeeded = conn.execute(
            "SELECT extract(epoch FROM min(at) FILTER (WHERE type = 'started'))::float8, "
            "extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded'))::float8, "
            "count(*) FILTER (WHERE type = 'succeeded') FROM procrastinate_events").fetchone()
    if succeeded != jobs and not capped:
        raise RuntimeError(f"procrastinate: {succeeded} of {jobs} jobs succeeded")
    return ProcrastinateResult(jobs=succeeded, deferred=jobs, seconds=last - first, defer_seconds=defer_seconds,
                               capped=capped)


async def _prepare(conninfo: str, jobs: int) -> float:
    """Apply procrastinate's schema and defer `jobs` jobs in bulk; returns the defer time."""
    app = make_app(conninfo, pool_size=2)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        task = app.tasks["noop"]
        started = time.monotonic()
        for start in range(0, jobs, 1000):
            await task.batch_defer_async(*({} for _ in range(min(1000, jobs - start))))
        return time.monotonic() - started


async def _worker(conninfo: str, concurrency: int, ready: Path, go: Path) -> None:
    app = make_app(conninfo, pool_size=concurrency)
    async with app.open_async():
        ready.touch()
        while not go.exists():
            await asyncio.sleep(0.005)
        await app.run_worker_async(concurrency=concurrency, wait=False)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.procrastinate_ref")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="one procrastinate worker process (the harness starts two)")
    worker.add_argument("--conninfo", required=True)
    worker.add_argument("--concurrency", type=int, default=16)
    worker.add_argument("--ready", type=Path, required=True)
    worker.add_argument("--go", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_worker(args.conninfo, args.concurrency, args.ready, args.go))


if __name__ == "__main__":
    main(sys.argv[1:])
