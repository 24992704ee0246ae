"""Ratios, goals, the printed table and results.json."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from .config import FIGURES

# The performance goals (for the benchmark, not for tests): figure -> (comparison, threshold).
GOALS: dict[str, tuple[str, float]] = {
    "ingest_vs_db": (">=", 0.12),
    "ingest_template_vs_plain": (">=", 0.8),  # templated single POSTs / plain ones, same run and channel
    "ingest_throttled_vs_plain": (">=", 0.9),  # single POSTs under the fleet-wide rate limit / without one
    "ingest_batch_per_s": (">=", 30_000),
    "dispatch_vs_db": (">=", 0.3),
    "dispatch_vs_procrastinate": (">=", 10),
    "dispatch_100ms_vs_ceiling": (">=", 0.9),  # dispatch_100ms_per_s_per_process / (threads / 0.1 s)
    "latency_p50_ms": ("<=", 10),
    "latency_p99_ms": ("<=", 50),
    "dispatcher_rss_mb": ("<=", 120),
    "budget_send_rate_ratio": (">=", 0.9),
    "budget_429_fraction": ("<=", 0.01),
    "breaker_attempts_during_outage": ("<=", 10),
    "breaker_recovery_over_cool_down_s": ("<=", 2),  # breaker_recovery_s - cool_down
}
# At a deployment's scale (bench/at_scale.py): each ratio is to the same measurement on empty
# tables in the same run.
GOALS.update({
    "dispatch_at_1m_history_ratio": (">=", 0.9),
    "ingest_at_1m_history_ratio": (">=", 0.9),
    "latency_p99_ms_at_1000_per_s": ("<=", 50),
})
GOALS["stats_ms_at_1m_per_day"] = ("<=", 200)  # bench/stats_bench.py


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def add_ratios(figures: dict[str, Any], details: dict[str, Any]) -> None:
    """The goals' ratios, each to a reference measured in the same run."""
    f = figures.get
    figures["ingest_vs_db"] = _ratio(f("ingest_single_per_s"), f("pgbench_outbox_tx_tps"))
    figures["ingest_template_vs_plain"] = _ratio(details.get("ingest_template_per_s"),
                                                 details.get("ingest_template_plain_per_s"))
    details["ingest_throttled_vs_plain"] = _ratio(details.get("ingest_throttled_per_s"),
                                                  details.get("ingest_throttled_plain_per_s"))
    figures["dispatch_vs_db"] = _ratio(f("dispatch_noop_per_s"), f("pgbench_lease_ack_rows_per_s"))
    figures["dispatch_vs_procrastinate"] = _ratio(f("dispatch_noop_per_s"), f("procrastinate_noop_per_s"))
    details["dispatch_batch1_vs_batch100"] = _ratio(f("dispatch_noop_batch1_per_s"), f("dispatch_noop_per_s"))
    details["dispatch_100ms_vs_ceiling"] = _ratio(f("dispatch_100ms_per_s_per_process"),
                                                  details.get("dispatch_100ms_ceiling_per_s"))
    recovery, cool_down = f("breaker_recovery_s"), details.get("breaker_cool_down_s")
    details["breaker_recovery_over_cool_down_s"] = None if recovery is None or cool_down is None else recovery - cool_down


def goal_status(figures: dict[str, Any], details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{goal figure: {"goal": "... >= x", "value": v, "met": bool | None}}."""
    out = {}
    for name, (op, threshold) in GOALS.items():
        value = figures.get(name, details.get(name))
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out[name] = {"goal": f"{op} {threshold:,g}", "value": value, "met": met}
    return out


def machine(server_version: str | None, notes: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "postgresql_version": server_version,
        "python_version": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
        "notes": notes,
    }


def write_json(path: Path, figures: dict[str, Any], machine_block: dict[str, Any], details: dict[str, Any]) -> None:
    document = {name: _round(figures.get(name)) for name in FIGURES}
    document["machine"] = machine_block
    document["details"] = {k: _round(v) for k, v in details.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value:.3f}"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f} s"
    if abs(value) >= 100:
        return f"{value:,.0f}/s" if unit == "/s" else f"{value:,.0f}"
    return f"{value:.2f}{unit}" if unit != "/s" else f"{value:.1f}/s"


def _met(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def table(figures: dict[str, Any], details: dict[str, Any]) -> str:
    """A Markdown table: figure, value, reference, ratio, goal, met? (pastes into the README)."""
    goals = goal_status(figures, details)
    f, d = figures.get, details.get

    def goal(name: str) -> tuple[str, str]:
        g = goals[name]
        return g["goal"].replace(">=", "≥").replace("<=", "≤"), _met(g["met"])

    ceiling = d("dispatch_100ms_ceiling_per_s")
    rows = [
        ("ingest_single_per_s", _fmt(f("ingest_single_per_s"), "/s"),
         f"pgbench_outbox_tx_tps {_fmt(f('pgbench_outbox_tx_tps'), '/s')}",
         f"ingest_vs_db {_fmt(f('ingest_vs_db'), 'ratio')}", *goal("ingest_vs_db")),
        ("ingest_single_p50_ms", _fmt(f("ingest_single_p50_ms"), "ms"), "", "", "", ""),
        ("ingest_single_p99_ms", _fmt(f("ingest_single_p99_ms"), "ms"), "", "", "", ""),
        ("ingest_template_per_s", _fmt(d("ingest_template_per_s"), "/s"),
         f"plain, same email {_fmt(d('ingest_template_plain_per_s'), '/s')}",
         f"ingest_template_vs_plain {_fmt(f('ingest_template_vs_plain'), 'ratio')}", *goal("ingest_template_vs_plain")),
        ("ingest_throttled_per_s", _fmt(d("ingest_throttled_per_s"), "/s"),
         f"no rate limit {_fmt(d('ingest_throttled_plain_per_s'), '/s')}",
         f"ingest_throttled_vs_plain {_fmt(d('ingest_throttled_vs_plain'), 'ratio')}",
         *goal("ingest_throttled_vs_plain")),
        ("ingest_batch_per_s", _fmt(f("ingest_batch_per_s"), "/s"), "", "", *goal("ingest_batch_per_s")),
        ("dispatch_noop_per_s", _fmt(f("dispatch_noop_per_s"), "/s"),
         f"pgbench_lease_ack_rows_per_s {_fmt(f('pgbench_lease_ack_rows_per_s'), '/s')}",
         f"dispatch_vs_db {_fmt(f('dispatch_vs_db'), 'ratio')}", *goal("dispatch_vs_db")),
        ("dispatch_noop_per_s", _fmt(f("dispatch_noop_per_s"), "/s"),
         f"procrastinate_noop_per_s {_fmt(f('procrastinate_noop_per_s'), '/s')}",
         f"dispatch_vs_procrastinate {_fmt(f('dispatch_vs_procrastinate'), 'ratio')}",
         *goal("dispatch_vs_procrastinate")),
        ("dispatch_noop_batch1_per_s", _fmt(f("dispatch_noop_batch1_per_s"), "/s"),
         f"dispatch_noop_per_s {_fmt(f('dispatch_noop_per_s'), '/s')}",
         f"batch 1 / batch 100 {_fmt(d('dispatch_batch1_vs_batch100'), 'ratio')}", "", ""),
        ("dispatch_100ms_per_s_per_process", _fmt(f("dispatch_100ms_per_s_per_process"), "/s"),
         f"ceiling {d('dispatch_100ms_threads') or 'n/a'} threads / 0.1 s = {_fmt(ceiling, '/s')}",
         f"{_fmt(d('dispatch_100ms_vs_ceiling'), 'ratio')} of ceiling", *goal("dispatch_100ms_vs_ceiling")),
        ("latency_p50_ms", _fmt(f("latency_p50_ms"), "ms"), "", "", *goal("latency_p50_ms")),
        ("latency_p99_ms", _fmt(f("latency_p99_ms"), "ms"), "", "", *goal("latency_p99_ms")),
        ("dispatcher_rss_mb", _fmt(f("dispatcher_rss_mb"), "MiB"), "", "", *goal("dispatcher_rss_mb")),
        ("commits_per_notification", _fmt(f("commits_per_notification"), "ratio"), "", "", "", ""),
        ("row_versions_per_delivery", _fmt(f("row_versions_per_delivery"), "ratio"),
         "outbox, notification, notification_event", "", "", ""),
        ("wal_bytes_per_delivery", _fmt(f("wal_bytes_per_delivery"), "count"), "", "", "", ""),
        ("budget_send_rate_ratio", _fmt(f("budget_send_rate_ratio"), "ratio"),
         f"provider takes {d('budget_rate_per_s') or 'n/a'}/s", "", *goal("budget_send_rate_ratio")),
        ("budget_429_fraction", _fmt(f("budget_429_fraction"), "ratio"), "", "", *goal("budget_429_fraction")),
        ("breaker_attempts_during_outage", _fmt(f("breaker_attempts_during_outage"), "count"),
         f"{d('breaker_outage_s') or 'n/a'} s of 503", "", *goal("breaker_attempts_during_outage")),
        ("breaker_recovery_s", _fmt(f("breaker_recovery_s"), "s"), f"cool_down {d('breaker_cool_down_s') or 'n/a'} s",
         f"over cool_down {_fmt(d('breaker_recovery_over_cool_down_s'), 's')}", *goal("breaker_recovery_over_cool_down_s")),
    ]
    history_drain, history_ingest = d("history_drain_per_s") or {}, d("history_ingest_per_s") or {}
    claim_without = (d("claim_ms_without_backlog") or {}).get("p50")
    rows += [
        ("dispatch_at_1m_history_ratio", _fmt(history_drain.get("history"), "/s"),
         f"empty tables {_fmt(history_drain.get('empty'), '/s')}",
         _fmt(f("dispatch_at_1m_history_ratio"), "ratio"), *goal("dispatch_at_1m_history_ratio")),
        ("ingest_at_1m_history_ratio", _fmt(history_ingest.get("history"), "/s"),
         f"empty tables {_fmt(history_ingest.get('empty'), '/s')}",
         _fmt(f("ingest_at_1m_history_ratio"), "ratio"), *goal("ingest_at_1m_history_ratio")),
        ("claim_ms_at_100k_backlog_other_channel", _fmt(f("claim_ms_at_100k_backlog_other_channel"), "ms"),
         f"no backlog {_fmt(claim_without, 'ms')}", _fmt(d("claim_backlog_vs_without"), "ratio"), "", ""),
        ("latency_p99_ms_at_1000_per_s", _fmt(f("latency_p99_ms_at_1000_per_s"), "ms"),
         f"p50 {_fmt(d('latency_1000_p50_ms'), 'ms')}, offered {_fmt(d('latency_1000_offered_per_s'), '/s')}, "
         f"accepted {_fmt(d('latency_1000_accepted_per_s'), '/s')}", "", *goal("latency_p99_ms_at_1000_per_s")),
    ]
    admin_ms = (d("stats_admin_page_ms") or {}).get("median")
    rows.append(("stats_ms_at_1m_per_day", _fmt(f("stats_ms_at_1m_per_day"), "ms"),
                 f"admin page {_fmt(admin_ms, 'ms')}", "", *goal("stats_ms_at_1m_per_day")))
    header = ("figure", "value", "reference", "ratio", "goal", "met?")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
