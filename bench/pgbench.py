"""The database's own limit: pgbench replaying ../shared/bench-reference on the same server.

The scripts do the least work an outbox needs, in plain SQL, with no application in between;
our figures are given as ratios to them, measured in the same run.

- outbox_tx.sql at -c 32 -j 2: one transaction inserting a notification and its outbox row.
- lease100_ack_batch.sql at -c 1: claim 100 rows with FOR UPDATE SKIP LOCKED under a lease,
  then mark them done in one statement; rows drained per second = transactions x 100, run
  with -t so that every transaction finds 100 rows.

The shipped schema.sql lacks the `locked_by` column that lease100_ack_batch.sql writes (the
script aborts on it), so the harness adds it, with a partial index on it for the rows being
sent: without one, the script's acknowledging UPDATE scans the whole table each time (28 ms
per transaction on 200,000 rows here, 3,500 to 4,900 rows/s), which measures a missing index
and not the database's limit. The full run measures the unindexed variant too and reports it
in the details (pgbench_lease_ack_unindexed_rows_per_s).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .database import Server, find_tool

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")


@dataclass(frozen=True)
class PgbenchRun:
    tps: float
    transactions: int
    output: str


class Reference:
    """The reference scripts and a scratch database to replay them in."""

    def __init__(self, server: Server, reference_dir: Path, dbname: str):
        self.server = server
        self.dir = reference_dir
        self.dbname = dbname
        self.pgbench = find_tool("pgbench")
        self.psql = find_tool("psql")

    @staticmethod
    def missing(reference_dir: Path) -> str | None:
        """Why the reference cannot run here, or None."""
        needed = ["schema.sql", "outbox_tx.sql", "lease100_ack_batch.sql"]
        absent = [name for name in needed if not (reference_dir / name).exists()]
        if absent:
            return f"{reference_dir} lacks {', '.join(absent)}"
        if not find_tool("pgbench") or not find_tool("psql"):
            return "pgbench or psql not found (neither pgserver's binaries nor PATH)"
        return None

    def prepare(self, *, outbox_rows: int = 0, index_locked_by: bool = True) -> None:
        """A fresh schema (schema.sql), with `outbox_rows` pending rows to drain."""
        statements = ["ALTER TABLE outbox ADD COLUMN locked_by int"]
        if index_locked_by:
            statements.append("CREATE INDEX outbox_sending ON outbox (locked_by) WHERE status = 'sending'")
        if outbox_rows:
            # As lease100_ack_batch.sql's README says: INSERT ... SELECT FROM generate_series.
            statements.append(f"INSERT INTO outbox (notif_id) SELECT g FROM generate_series(1, {int(outbox_rows)}) g")
        self._psql("-f", str(self.dir / "schema.sql"), *[arg for s in statements for arg in ("-c", s)])
        self._psql("-c", "VACUUM ANALYZE")  # VACUUM cannot run in psql's multi-command transaction
        self.server.checkpoint(self.dbname)

    def outbox_tx(self, *, seconds: int, clients: int = 32, threads: int = 2) -> PgbenchRun:
        """Call prepare() first."""
        return self._pgbench("-f", str(self.dir / "outbox_tx.sql"), "-c", str(clients), "-j", str(threads),
                             "-T", str(seconds))

    def lease_ack_rows_per_s(self, *, fill_rows: int, index_locked_by: bool = True,
                             max_seconds: int | None = None) -> tuple[float, PgbenchRun, float | None]:
        """Rows drained per second by lease100_ack_batch.sql at -c 1 while rows remain, and
        the server's CPU milliseconds per row drained (None if it cannot be measured)."""
        self.prepare(outbox_rows=fill_rows, index_locked_by=index_locked_by)
        script = str(self.dir / "lease100_ack_batch.sql")
        cpu_start = self.server.cpu_seconds()
        if max_seconds is not None:  # the slow variant: a fixed time, far from running out of rows
            run = self._pgbench("-f", script, "-c", "1", "-T", str(max_seconds))
        else:  # every transaction finds its 100 rows: stop 5% short of the fill
            run = self._pgbench("-f", script, "-c", "1", "-t", str(int(fill_rows * 0.95) // 100))
        cpu_end = self.server.cpu_seconds()
        rows = run.transactions * 100
        cpu_ms = None if cpu_start is None or cpu_end is None else (cpu_end - cpu_start) * 1000 / rows
        return run.tps * 100, run, cpu_ms

    # --- plumbing -----------------------------------------------------------------------------

    def _psql(self, *args: str) -> None:
        done = subprocess.run([self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.server.conninfo(self.dbname),
                               *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")

    def _pgbench(self, *args: str) -> PgbenchRun:
        done = subprocess.run([self.pgbench, "-n", *args, self.server.conninfo(self.dbname)],
                              capture_output=True, text=True)
        output = done.stdout + done.stderr
        tps, processed, failed = _TPS.search(output), _PROCESSED.search(output), _FAILED.search(output)
        if done.returncode != 0 or not tps or not processed or (failed and int(failed.group(1))):
            raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{output[-2000:]}")
        return PgbenchRun(float(tps.group(1)), int(processed.group(1)), output)
