"""The benchmark harness (bench/) runs end to end at tiny sizes and writes every figure.

This checks the harness, not the service's speed: no figure is compared with a goal here, so
a slow or busy machine cannot fail it. It starts the real processes (gunicorn, run_dispatchers,
pgbench, procrastinate workers) against the harness's own embedded PostgreSQL, which is why it
takes about half a minute and is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.config import FIGURES, REFERENCE_DIR
from bench.procrastinate_ref import available as procrastinate_available
from tests.helpers import ROOT

# Figures that are null, with a note saying why, when their reference cannot run here.
NEEDS_PROCRASTINATE = {"procrastinate_noop_per_s", "dispatch_vs_procrastinate"}
NEEDS_PGBENCH_REFERENCE = {"pgbench_outbox_tx_tps", "ingest_vs_db", "pgbench_lease_ack_rows_per_s", "dispatch_vs_db"}


# A fraction of failures that is rightly nothing.
MAY_BE_ZERO = {"budget_429_fraction"}


@pytest.mark.slow
def test_smoke_run_writes_every_figure_as_a_number(tmp_path):
    results = tmp_path / "results.json"
    # A server of its own, so that a `make bench` running meanwhile neither waits for this
    # test nor makes it wait (each run locks its server).
    env = {**os.environ, "BENCH_PGDATA": str(ROOT / ".data" / "bench-pg-smoke")}
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(results)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"bench --smoke failed:\n{done.stdout}\n{done.stderr}"

    document = json.loads(results.read_text())
    notes = " ".join(document["machine"]["notes"])
    may_be_null = set()
    if not procrastinate_available():
        may_be_null |= NEEDS_PROCRASTINATE
        assert "procrastinate is not installed" in notes
    if not (REFERENCE_DIR / "outbox_tx.sql").exists():
        may_be_null |= NEEDS_PGBENCH_REFERENCE
        assert "pgbench references skipped" in notes
    for name in FIGURES:
        value = document[name]
        if value is None and name in may_be_null:
            continue
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} = {value!r}"
        assert value > 0 or (name in MAY_BE_ZERO and value == 0), f"{name} = {value!r}"

    machine = document["machine"]
    assert machine["cpu_count"] >= 1 and machine["postgresql_version"] and machine["date"]
    # The table went to standard output, one row per figure of the issue.
    assert "| ingest_single_per_s" in done.stdout and "| commits_per_notification" in done.stdout
    # What a delivery writes: row versions (at least the outbox row's insert, claim and delete,
    # and the notification's and its event's) and WAL bytes.
    assert document["row_versions_per_delivery"] >= 3 and document["wal_bytes_per_delivery"] > 0
    assert "| row_versions_per_delivery" in done.stdout and "| wal_bytes_per_delivery" in done.stdout

    # Templated against plain single POSTs, measured in the same run: the ratio, its two rates
    # and its row (with its goal).
    assert "ingest_template_vs_plain" in document and document["ingest_template_vs_plain"] > 0
    details = document["details"]
    assert details["ingest_template_per_s"] > 0 and details["ingest_template_plain_per_s"] > 0
    assert details["ingest_template_errors"] == 0 and details["ingest_template_requests"] > 0
    assert details["goals"]["ingest_template_vs_plain"]["goal"] == ">= 0.8"
    assert "| ingest_template_per_s" in done.stdout and "ingest_template_vs_plain" in done.stdout

    # At a deployment's scale (bench/at_scale.py), at smoke sizes: each figure, its row and goal,
    # and what it was measured from.
    for name in ("dispatch_at_1m_history_ratio", "ingest_at_1m_history_ratio",
                 "claim_ms_at_100k_backlog_other_channel", "latency_p99_ms_at_1000_per_s"):
        assert f"| {name}" in done.stdout, name
    assert details["goals"]["dispatch_at_1m_history_ratio"]["goal"] == ">= 0.9"
    assert details["goals"]["ingest_at_1m_history_ratio"]["goal"] == ">= 0.9"
    assert details["goals"]["latency_p99_ms_at_1000_per_s"]["goal"] == "<= 50"
    legs = details["history_legs"]
    assert [leg["leg"] for leg in legs] == ["empty", "history"]
    # The empty leg starts from (nearly) empty tables, the history leg from the history and more.
    assert legs[0]["rows_before"]["notification"] < details["history_rows"] <= legs[1]["rows_before"]["notification"]
    assert legs[1]["rows_before"]["notification_event"] >= 2 * details["history_rows"]
    assert all(leg["ingest_errors"] == 0 for leg in legs)
    assert "history rows in this smoke run" in notes
    claims = details["claim_ms_at_backlog"]
    assert claims["p99"] >= document["claim_ms_at_100k_backlog_other_channel"] > 0
    assert details["claim_ms_without_backlog"]["p50"] > 0
    assert details["claim_explain"]["with_backlog"]["shared_hit_blocks"] > 0
    assert details["latency_1000_accepted"] == details["latency_1000_samples"] > 0
    assert details["latency_1000_offered_per_s"] > 0 and details["latency_1000_p50_ms"] > 0
