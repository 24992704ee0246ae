"""Run sizes and paths.

Three profiles: the full run (`make bench`, about 13 minutes), --quick (`make bench-quick`,
about 2 to 3 minutes) and --smoke (tiny, for tests/integration/bench/test_bench_smoke.py: it checks that every piece
runs and that results.json has every figure, not what the figures are).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The plain-SQL pgbench scripts live beside the checkout (shared/ is a sibling of the repo).
REFERENCE_DIR = REPO.parent / "shared" / "bench-reference"
# Our own server: restarting or loading it disturbs nobody's tests (they use .data/pg).
# BENCH_PGDATA picks another (tests/integration/bench/test_bench_smoke.py uses one of its own).
BENCH_PGDATA = Path(os.environ.get("BENCH_PGDATA") or REPO / ".data" / "bench-pg")
RUNS_DIR = REPO / ".data" / "bench-runs"  # logs, channels file, latency log of each run
DEFAULT_JSON = REPO / "bench" / "results.json"


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    name: str
    pgbench_seconds: int  # outbox_tx.sql at -c 32
    # Rows put in the reference outbox for lease100_ack_batch.sql (200,000, as its README says:
    # the rate falls as the drained rows' dead index entries pile up, so keep it the same).
    lease_fill_rows: int
    wrk_warmup_seconds: int  # untimed: gunicorn workers load URLconfs, connect, etc.
    wrk_seconds: int
    template_seconds: int  # each of the 4 legs of ingest_template_vs_plain (plain, templated, templated, plain)
    batch_requests: int  # POSTs of 1,000 notifications each
    batch_clients: int
    drain_rows: int  # dispatch_noop_per_s (100,000 in the full run)
    batch1_rows: int  # the same drain with --batch-size 1
    slow_rows: int  # through the 100 ms channel, one process
    latency_seconds: int  # at 50 notifications per second
    procrastinate_jobs: int  # the same number as drain_rows, to compare like with like
    procrastinate_max_seconds: int  # its workers are stopped then (it drains a few hundred a second)
    unindexed_lease_reference: bool  # also run lease100 on the shipped schema (slow, informative)
    budget_rows: int  # drained at 50/s through a rate-limited channel (bench/policy.py)
    outage_seconds: float  # the provider answers 503 this long, with breaker_rows due
    breaker_rows: int


FULL = Sizes("full", pgbench_seconds=10, lease_fill_rows=200_000, wrk_warmup_seconds=2, wrk_seconds=15,
             template_seconds=6, batch_requests=100, batch_clients=4, drain_rows=100_000, batch1_rows=10_000,
             slow_rows=3_200, latency_seconds=20, procrastinate_jobs=100_000, procrastinate_max_seconds=120,
             unindexed_lease_reference=True, budget_rows=1_500, outage_seconds=30, breaker_rows=1_000)
QUICK = Sizes("quick", pgbench_seconds=4, lease_fill_rows=200_000, wrk_warmup_seconds=1, wrk_seconds=5,
              template_seconds=2, batch_requests=20, batch_clients=4, drain_rows=10_000, batch1_rows=2_000,
              slow_rows=800, latency_seconds=5, procrastinate_jobs=10_000, procrastinate_max_seconds=25,
              unindexed_lease_reference=False, budget_rows=400, outage_seconds=12, breaker_rows=300)
SMOKE = Sizes("smoke", pgbench_seconds=1, lease_fill_rows=10_000, wrk_warmup_seconds=0, wrk_seconds=1,
              template_seconds=1, batch_requests=2, batch_clients=2, drain_rows=1_000, batch1_rows=100, slow_rows=160,
              latency_seconds=1, procrastinate_jobs=1_000, procrastinate_max_seconds=10,
              unindexed_lease_reference=False, budget_rows=100, outage_seconds=3, breaker_rows=50)

# The figures, in the order of the table; each is a key of results.json.
FIGURES = (
    "ingest_single_per_s", "ingest_single_p50_ms", "ingest_single_p99_ms", "pgbench_outbox_tx_tps",
    "ingest_vs_db", "ingest_template_vs_plain", "ingest_batch_per_s",
    "dispatch_noop_per_s", "pgbench_lease_ack_rows_per_s", "dispatch_vs_db",
    "procrastinate_noop_per_s", "dispatch_vs_procrastinate", "dispatch_noop_batch1_per_s",
    "dispatch_100ms_per_s_per_process", "latency_p50_ms", "latency_p99_ms",
    "dispatcher_rss_mb", "commits_per_notification", "row_versions_per_delivery", "wal_bytes_per_delivery",
    "budget_send_rate_ratio", "budget_429_fraction", "breaker_attempts_during_outage", "breaker_recovery_s",
)
# At a deployment's scale (bench/at_scale.py): a long history, a backlog on another channel, 1,000/s offered.
FIGURES += ("dispatch_at_1m_history_ratio", "ingest_at_1m_history_ratio", "claim_ms_at_100k_backlog_other_channel",
            "latency_p99_ms_at_1000_per_s")
# GET /api/v1/stats with 1,000,000 notifications accepted in the last day (bench/stats_bench.py).
FIGURES += ("stats_ms_at_1m_per_day",)

# What the dispatcher runs with in every drain, as in a deployment (docker-compose: 2 processes,
# the default 16 threads and batch of 100). procrastinate gets the same: 2 workers, 16 each.
DISPATCH_PROCESSES = 2
DISPATCH_THREADS = 16
# gunicorn as the Dockerfile runs it: 4 workers (of 4 threads each, notifications_project/gunicorn.conf.py).
GUNICORN_WORKERS = 4
WRK_CONNECTIONS = 32
LATENCY_RATE_PER_S = 50
SLOW_LATENCY_MS = 100


@dataclass(frozen=True)
class AtScaleSizes:
    """How much work the phases of bench/at_scale.py do (the drains are Sizes.drain_rows)."""

    history_rows: int  # finished notifications (and twice as many events) in the history legs
    alternate: bool  # legs empty, history, history, empty; else only empty, history
    ingest_leg_seconds: int  # single POSTs in each leg
    claim_backlog_rows: int  # due rows on the other channel
    claims: int  # timed claims, with and without the backlog each
    latency_rate_per_s: int
    latency_seconds: int


# Keyed by Sizes.name. The history is 1,000,000 rows in quick runs too (the figure is named
# after it); smoke runs check that the pieces work, on small tables.
AT_SCALE = {
    "full": AtScaleSizes(history_rows=1_000_000, alternate=True, ingest_leg_seconds=10, claim_backlog_rows=100_000,
                         claims=1_000, latency_rate_per_s=1_000, latency_seconds=15),
    "quick": AtScaleSizes(history_rows=1_000_000, alternate=True, ingest_leg_seconds=4, claim_backlog_rows=100_000,
                          claims=300, latency_rate_per_s=1_000, latency_seconds=5),
    "smoke": AtScaleSizes(history_rows=10_000, alternate=False, ingest_leg_seconds=1, claim_backlog_rows=2_000,
                          claims=20, latency_rate_per_s=1_000, latency_seconds=1),
}
