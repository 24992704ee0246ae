"""The results table of a cluster run, from its results dictionary (the same figures as the JSON)."""

from __future__ import annotations

from typing import Any


def table(results: dict[str, Any]) -> str:
    """Verdict, checks, figures, fencing, faults, API answers, timings."""
    config = results["config"]
    title = (f"Cluster run: {config['notifications']} notifications through lb, 2 API hosts, 3 dispatcher hosts "
             f"at +{config['rtt_ms']:g} ms to db: {results['result'].upper()}")
    rows: list[tuple[str, str]] = []

    def section(name: str) -> None:
        rows.append((name, ""))

    def row(label: str, value: Any) -> None:
        rows.append((f"  {label}", str(value)))

    if results.get("checks"):
        section("checks (each must be 0)")
        for name, value in results["checks"].items():
            row(name, f"{value}{'' if value == 0 else '   <-- FAILED'}")
    if "dispatch_rtt20_vs_local" in results:
        section("figures")
        drains = results["measurements"]["drains"]
        throughput = results["measurements"]["api_throughput"]
        row("dispatch_rtt20_vs_local", f"{results['dispatch_rtt20_vs_local']} ({drains['delayed_per_s']:,.0f}/s "
            f"at +{drains['added_rtt_ms']:g} ms vs {drains['direct_per_s']:,.0f}/s direct; goal >= 0.5)")
        row("api_via_lb_vs_direct", f"{results['api_via_lb_vs_direct']} ({throughput['via_lb_per_s']:,.0f}/s "
            f"via lb and PgBouncer vs {throughput['direct_per_s']:,.0f}/s direct)")
    if results.get("delivery"):
        delivery = results["delivery"]
        section("delivery")
        row("acknowledged / delivered", f"{delivery['acknowledged']} / {delivery['delivered']}")
        row("duplicates", f"{delivery['duplicates']} ({delivery['duplicate_rate']:.2%}): "
            f"{delivery['duplicates_by_cause'] or 'none'}")
        row("lease expired (rows taken over)", delivery["lease_expired_events"])
    if results.get("fencing"):
        section("fencing (the dispatcher host cut off from db)")
        for name, value in results["fencing"].items():
            row(name.replace("_", " "), value)
    if results.get("faults"):
        section("faults")
        for event in results["faults"]["events"]:
            row(f"t={event['t']:.1f}s", event["kind"])
        for error in results["faults"]["errors"]:
            row("error", error)
    if results.get("api"):
        section("API (through lb)")
        row("answers", results["api"]["answers"])
        row("retries / replayed", f"{results['api']['retries']} / {results['api']['replayed']}")
    timing = results.get("timing", {})
    if timing:
        section("timing")
        for name, value in timing.items():
            row(name.replace("_", " "), value)

    width = max((len(label) for label, _ in rows), default=20) + 2
    lines = [title, "-" * len(title)]
    lines += [f"{label:<{width}}{value}" if value else label for label, value in rows]
    if results.get("error"):
        lines.append(f"error: {results['error']}")
    for problem in results.get("cleanup_errors", []):
        lines.append(f"cleanup: {problem}")
    return "\n".join(lines)
