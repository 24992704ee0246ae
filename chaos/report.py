"""The results table of a run, from its results dictionary (the same figures as the JSON)."""

from __future__ import annotations

from typing import Any

Rows = list[tuple[str, str]]


def table(results: dict[str, Any]) -> str:
    """A plain-text table: verdict, checks, deliveries, faults, API, dispatchers, timings."""
    config = results["config"]
    rows: Rows = []
    _checks(rows, results.get("checks", {}))
    _delivery(rows, results.get("delivery", {}), results.get("dispatchers", {}))
    _faults(rows, results.get("faults", {}))
    _hostile(rows, results.get("sends", {}), results.get("isolation"))
    _api(rows, results.get("api", {}))
    _dispatchers(rows, results.get("dispatchers", {}))
    _timing(rows, results.get("timing", {}))

    width = max((len(label) for label, _ in rows), default=20) + 2
    title = (f"Chaos run: {config['notifications']} notifications, {config['dispatchers']} dispatcher processes, "
             f"lease {config['lease_seconds']:g}s: {results['result'].upper()}")
    lines = [title, "-" * max(len(title), width + 40)]
    lines += [f"{label:<{width}}{value}" if value else label for label, value in rows]
    if results.get("error"):
        lines.append(f"error: {results['error']}")
    if results.get("kept_database"):
        lines.append(f"database kept for inspection: {results['kept_database']}")
    return "\n".join(lines)


def _row(rows: Rows, label: str, value: Any) -> None:
    rows.append((f"  {label}", str(value)))


def _checks(rows: Rows, checks: dict[str, int]) -> None:
    if not checks:
        return
    rows.append(("checks (each must be 0)", ""))
    for name, value in checks.items():
        _row(rows, name.replace("_", " "), f"{value}{'' if value == 0 else '   <-- FAIL'}")


def _delivery(rows: Rows, delivery: dict[str, Any], dispatchers: dict[str, Any]) -> None:
    if not delivery:
        return
    rows.append(("delivery", ""))
    _row(rows, "acknowledged by the API (2xx)", delivery["acknowledged"])
    _row(rows, "delivered to the provider (distinct)", delivery["delivered"])
    _row(rows, "final statuses", ", ".join(f"{k} {v}" for k, v in delivery["statuses"].items()))
    _row(rows, "duplicates (deliveries beyond the first)", f"{delivery['duplicates']} ({delivery['duplicate_rate']:.2%})")
    for cause, count in delivery["duplicates_by_cause"].items():
        _row(rows, f"  {cause.replace('_', ' ')}", count)
    _row(rows, "attempts per notification (mean / max / cap)",
         f"{delivery['attempts_mean']:.2f} / {delivery['attempts_max']} / {delivery['max_attempts']}")
    _row(rows, "  distribution (attempts: notifications)",
         ", ".join(f"{k}: {v}" for k, v in delivery["attempts_distribution"].items()))
    _row(rows, "provider requests per notification (mean / max)",
         f"{delivery['provider_requests_per_notification_mean']:.2f} / {delivery['provider_requests_per_notification_max']}")
    _row(rows, "leases lost during a send (history events)", delivery["lease_expired_events"])
    _row(rows, "stale outcomes fenced out (dispatcher logs)", dispatchers.get("fenced_outcomes", 0))


def _faults(rows: Rows, faults: dict[str, Any]) -> None:
    if not faults:
        return
    rows.append(("faults injected", ""))
    _row(rows, "SIGKILL dispatcher process (replaced)", faults["sigkill_process"])
    _row(rows, "SIGKILL supervisor + its process (restarted)", faults["sigkill_supervisor"])
    codes = ", ".join(map(str, faults["sigterm_exit_codes"])) or "-"
    _row(rows, "SIGTERM, graceful (exit codes)", f"{faults['sigterm']} ({codes})")
    stops = [e for e in faults["events"] if e["kind"] == "sigstop"]
    detail = "; ".join(f"{e['seconds']:g}s, held {e['rows_held']} rows, {e['rows_sending']} sending" for e in stops)
    _row(rows, "SIGSTOP past the lease, then SIGCONT", f"{faults['sigstop']}{f' ({detail})' if detail else ''}")
    restarts = str(faults["db_restart"])
    if faults["db_restart_skipped"]:
        restarts += f" ({faults['db_restart_skipped']} skipped: DATABASE_URL without CHAOS_DB_RESTART_CMD)"
    _row(rows, "PostgreSQL restart", restarts)
    for outage in faults["db_outages"]:
        probe = outage["api_probe"]
        _row(rows, "  restart took / API answered 2xx again after",
             f"{outage['restart_seconds']:.1f}s / {probe['recovered_after_s']}s")
        _row(rows, "  API probe answers around it", ", ".join(f"{k}: {v}" for k, v in probe["answers"].items()))
        _row(rows, "  slowest probe answer", f"{probe['max_latency_s']:.2f}s")
    provider = {k: v for k, v in faults["provider"].items() if k != "ok"}
    _row(rows, "provider faults (of requests)",
         f"{', '.join(f'{k} {v}' for k, v in provider.items())} (of {sum(faults['provider'].values())})")
    for error in faults["errors"]:
        _row(rows, "NOT injected", error)


def _hostile(rows: Rows, sends: dict[str, Any], isolation: dict[str, Any] | None) -> None:
    if not sends:
        return
    rows.append(("hostile providers", ""))
    deadlines = ", ".join(f"{name} {seconds:g}s" for name, seconds in sends["deadlines_s"].items())
    _row(rows, "deadlines", deadlines)
    _row(rows, "longest past its deadline", f"{sends['longest_past_deadline_s']:+.2f}s "
                                             f"({sends['longest_past_deadline_channel']}), of {sends['count']} sends")
    _row(rows, "sends past their deadline + 1 s", sends["past_deadline_plus_1s"])
    if isolation:
        alone = ", ".join(f"{x:.0f}" for x in isolation["healthy_alone_per_s"])
        beside = ", ".join(f"{x:.0f}" for x in isolation["healthy_beside_tarpit_per_s"])
        _row(rows, "healthy channel alone (per s, each round)", alone)
        _row(rows, "  beside a channel that never answers", beside)
        _row(rows, "  throughput kept (beside / alone, >= 0.9)", f"{isolation['ratio']:.3f}")


def _api(rows: Rows, api: dict[str, Any]) -> None:
    if "answers" not in api:
        return
    rows.append(("API (the load driver's view)", ""))
    _row(rows, "requests / HTTP tries", f"{api['requests']} / {sum(api['answers'].values())}")
    _row(rows, "answers", ", ".join(f"{k}: {v}" for k, v in api["answers"].items()))
    _row(rows, "replayed from the Idempotency-Key", api["replayed"])
    _row(rows, "requests never acknowledged (gave up)", api["unacknowledged_requests"])
    _row(rows, "slowest answer (any / 503)", f"{api['max_latency_s']:.2f}s / {api['max_latency_503_s']:.2f}s")


def _dispatchers(rows: Rows, dispatchers: dict[str, Any]) -> None:
    if not dispatchers:
        return
    rows.append(("dispatchers (from their logs)", ""))
    _row(rows, "processes replaced by their supervisor", dispatchers.get("processes_replaced", 0))
    errors = dispatchers.get("claim_loop_db_errors", 0) + dispatchers.get("recorder_db_errors", 0)
    _row(rows, "database errors retried (most in one process)", f"{errors} ({dispatchers['db_error_lines_max_per_process']})")
    _row(rows, "outcomes given up (leases ran out first)", dispatchers.get("outcomes_given_up", 0))
    _row(rows, "exit codes of the final graceful stop", ", ".join(str(c) for c in dispatchers["final_exit_codes"].values()))


def _timing(rows: Rows, timing: dict[str, Any]) -> None:
    if "load_seconds" not in timing:
        return
    rows.append(("timing", ""))
    _row(rows, "load (submitting through the API)", f"{timing['load_seconds']:.1f}s")
    _row(rows, "time to drain (after the last acknowledgement)", f"{timing['drain_seconds']:.1f}s")
    _row(rows, "whole run (setup and teardown included)", f"{timing['total_seconds']:.1f}s")
