"""The chaos suite, small: at-least-once under SIGKILLs, a stall past the lease, a database
restart and a misbehaving provider (hostile answers included), with real processes (see
chaos/), and the isolation check: a healthy channel beside one that never answers.

`python -m chaos` runs as a subprocess with its own embedded PostgreSQL server (its own data
directory, so that its restart disturbs neither the test database nor `make chaos`), and
creates, migrates and drops its own database: this test uses no pytest-django database.
Whatever happens, every process the run started is killed here at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.processes import kill_recorded_groups
from chaos.provider import HOSTILE
from tests.helpers import ROOT

# The test's own server: `make chaos` (.data/chaos-pg) may run at the same time.
PGDATA = ROOT / ".data" / "chaos-pg-test"
RUN_TIMEOUT = 240  # seconds; the run takes about 55 on a 2-core machine
MINIMUM_FAULTS = {"sigkill": 2, "sigstop": 1, "db_restart": 1}

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT + 120)]


def test_small_chaos_run_loses_nothing_and_creates_nothing_twice(tmp_path):
    results_path, workdir = tmp_path / "results.json", tmp_path / "run"
    command = [
        sys.executable, "-m", "chaos", "--notifications", "500", "--dispatchers", "4",
        "--kills", "2", "--sigstops", "1", "--sigterms", "1", "--db-restarts", "1",
        "--json", str(results_path), "--workdir", str(workdir), "--pgdata", str(PGDATA),
        "--lock-timeout", "60",
    ]
    env = dict(os.environ)
    if not env.get("CHAOS_DB_RESTART_CMD"):
        # The run restarts its server: without a way to restart a DATABASE_URL server, it
        # uses its own embedded one (and never restarts a server the test suite shares).
        env.pop("DATABASE_URL", None)
    # Its own session: a timeout here signals the runner alone, which then cleans up itself.
    runner = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        output, _ = runner.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        output = _stop(runner)
        pytest.fail(f"the chaos run took more than {RUN_TIMEOUT}s:\n{output[-6000:]}")
    finally:
        _clean_up_after(runner, workdir)

    assert results_path.exists(), f"no results written (exit code {runner.returncode}):\n{output[-6000:]}"
    results = json.loads(results_path.read_text())
    report = f"\n{output[-8000:]}"
    checks, faults = results.get("checks", {}), results.get("faults", {})
    assert not results.get("error"), results["error"] + report
    assert checks["lost"] == 0, report
    assert checks["stuck"] == 0, report
    assert checks["idempotency_violations"] == 0, report
    for name, minimum in MINIMUM_FAULTS.items():
        assert faults[name] >= minimum, f"{name}: {faults[name]} injected, expected at least {minimum}" + report
    assert faults["errors"] == [], report
    # Every other invariant too (fencing, no concurrent holders, API 503s, no crash loops).
    assert {name: value for name, value in checks.items() if value} == {}, report
    assert results["result"] == "pass" and runner.returncode == 0, report
    assert results["delivery"]["acknowledged"] == 500, report
    # Hostile answers: each was met, no send outlived its deadline by a second, no
    # notification passed the attempt cap, and a healthy channel kept its throughput beside
    # one that never answers.
    provider = faults["provider"]
    assert all(provider.get(kind, 0) >= 1 for kind in HOSTILE), provider
    assert results["sends"]["past_deadline_plus_1s"] == 0 and results["sends"]["longest_past_deadline_s"] <= 1, report
    assert results["delivery"]["attempts_max"] <= results["config"]["max_attempts"], report
    assert results["isolation"]["ratio"] >= 0.9, report


def _stop(runner: subprocess.Popen) -> str:
    """SIGTERM the runner (it kills what it started), then SIGKILL it if it lingers."""
    runner.send_signal(signal.SIGTERM)
    try:
        output, _ = runner.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        runner.kill()
        output, _ = runner.communicate(timeout=10)
    return output or ""


def _clean_up_after(runner: subprocess.Popen, workdir: Path) -> None:
    """Whatever the runner left behind if it died: its process groups, listed in its pids
    file, and the embedded server, if that run started it."""
    if runner.poll() is None:
        _stop(runner)
    kill_recorded_groups(workdir / "pids.json")
    try:
        notes = json.loads((workdir / "pids.json").read_text())
    except (OSError, ValueError):
        return
    if runner.returncode is not None and runner.returncode >= 0:
        return  # the runner ended by itself (its cleanup ran): it stopped what it started
    if notes.get("embedded_started"):
        subprocess.run([sys.executable, "-m", "notifications_project.embedded_postgres", "stop"], cwd=ROOT,
                       env={**os.environ, "NOTIFY_EMBEDDED_PGDATA": notes["embedded_pgdata"]},
                       capture_output=True, timeout=60)
