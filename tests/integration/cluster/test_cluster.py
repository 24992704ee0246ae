"""The cluster run, short: 1,000 notifications through a load balancer onto two API hosts and
three dispatcher hosts, each a network namespace, while the network fails (see cluster/).

`python -m cluster` runs as a subprocess (its own PostgreSQL server on its own db host); it
needs root and `ip netns`: where the machine lacks them the test is skipped, saying why, and
never passes. Whatever happens, the hosts it created are gone at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from cluster import network
from tests.helpers import ROOT

RUN_TIMEOUT = 300  # seconds; the short run takes about 60 on a 2-core machine

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT + 120)]

TOP_LEVEL_KEYS = ("lost", "stuck", "idempotency_violations", "overlapping_sends", "stale_outcomes_recorded",
                  "duplicates", "dispatch_rtt20_vs_local", "api_via_lb_vs_direct")


def test_short_cluster_run_loses_nothing_across_hosts_under_network_faults(tmp_path):
    try:
        network.preflight()
    except network.NetworkError as exc:
        pytest.skip(f"this machine cannot host the cluster run: {exc}")
    results_path = tmp_path / "results.json"
    command = [sys.executable, "-m", "cluster", "--notifications", "1000", "--duration", "30",
               "--drain-rows", "2000", "--drain-pairs", "1", "--throughput-seconds", "3", "--throughput-pairs", "1",
               "--json", str(results_path)]
    # Its own session: a timeout here signals the runner alone, which then cleans up itself.
    runner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        output, _ = runner.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        runner.send_signal(signal.SIGTERM)
        try:
            output, _ = runner.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            runner.kill()
            output, _ = runner.communicate()
        pytest.fail(f"the cluster run took more than {RUN_TIMEOUT}s:\n{output[-6000:]}")
    finally:
        if runner.poll() is None:
            runner.kill()
        left = network.teardown()  # nothing, normally: the runner removes its hosts itself

    report = f"\n{output[-8000:]}"
    assert left == [], f"the run left hosts behind: {left}{report}"
    assert results_path.exists(), f"no results written (exit code {runner.returncode}){report}"
    results = json.loads(results_path.read_text())
    assert results["result"] == "pass" and runner.returncode == 0, report
    assert set(TOP_LEVEL_KEYS) <= set(results), report
    for key in ("lost", "stuck", "idempotency_violations", "overlapping_sends", "stale_outcomes_recorded"):
        assert results[key] == 0, f"{key}: {results[key]}{report}"
    assert all(value == 0 for value in results["checks"].values()), report
    # Every acknowledged notification reached the provider; every duplicate has a cause.
    assert results["delivery"]["acknowledged"] == 1000 == results["delivery"]["delivered"], report
    assert results["duplicates"] == sum(results["delivery"]["duplicates_by_cause"].values()), report
    # Each fault happened, and the cut-off host held work when it was cut.
    assert all(n == 1 for n in results["faults"]["counts"].values()), report
    assert results["fencing"]["rows_held_by_the_cut_host"] > 0, report
    # Figures were measured (their goals are make cluster's, on the full run).
    assert results["dispatch_rtt20_vs_local"] > 0 and results["api_via_lb_vs_direct"] > 0, report
