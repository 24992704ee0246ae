"""python -m bench [--quick | --smoke] [--json bench/results.json] [--only PHASES] [--keep-db]
                 [--load-generator auto|wrk|python]

Runs every measurement in one go, prints the table and writes results.json.
Exit code 0 when every phase ran (whatever the figures), 1 when a phase failed (its figures
are then null and the notes say why).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from . import dispatch, ingest, latency, pgbench, policy, procrastinate_ref, report, templates
from .at_scale import claim_phase, history_phase, latency_1000_phase
from .config import (
    BENCH_PGDATA,
    DEFAULT_JSON,
    DISPATCH_PROCESSES,
    DISPATCH_THREADS,
    FULL,
    GUNICORN_WORKERS,
    LATENCY_RATE_PER_S,
    QUICK,
    REFERENCE_DIR,
    RUNS_DIR,
    SLOW_LATENCY_MS,
    SMOKE,
    WRK_CONNECTIONS,
    Sizes,
)
from .database import Server, run_lock
from .servers import free_port, manage, service_env, start_gunicorn
from .stats_bench import stats_phase

PHASES = ("ingest", "template", "throttle", "batch", "latency", "dispatch", "batch1", "slow", "procrastinate", "policy")
# At a deployment's scale (bench/at_scale.py), run last: they fill and then empty the tables.
AT_SCALE_PHASES = ("history", "claim_backlog", "latency_1000", "stats")
PHASES += AT_SCALE_PHASES


class Run:
    """One benchmark run: its server, databases, processes' environment and figures."""

    def __init__(self, sizes: Sizes, phases: set[str], keep_db: bool, load_generator: str = "auto"):
        self.sizes = sizes
        self.use_wrk = {"auto": ingest.wrk_available(), "wrk": True, "python": False}[load_generator]
        self.phases = phases
        self.keep_db = keep_db
        self.stamp = f"{datetime.now():%Y%m%d_%H%M%S}_{os.getpid()}"
        self.dir = RUNS_DIR / self.stamp
        self.dir.mkdir(parents=True, exist_ok=True)
        self.figures: dict[str, Any] = {}
        self.details: dict[str, Any] = {"sizes": sizes.name, "run_dir": str(self.dir)}
        self.notes: list[str] = []
        self.failed: list[str] = []
        self.started = time.monotonic()
        self.external_db = bool(os.environ.get("DATABASE_URL"))  # read now: setup_django sets it later
        self.reference_missing = pgbench.Reference.missing(REFERENCE_DIR)
        if self.reference_missing:
            self.notes.append(f"pgbench references skipped: {self.reference_missing}; "
                              f"pgbench_* and the ratios to them are null")

    # --- progress and failures ------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def phase(self, name: str, body: Callable[[], None]) -> None:
        """Run one measurement; a failure is recorded and the next one still runs."""
        started = time.monotonic()
        try:
            body()
        except Exception as exc:  # a failed phase must not lose the figures of the others
            self.failed.append(name)
            self.notes.append(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            with open(self.dir / "errors.log", "a") as log:
                log.write(f"--- {name}\n{traceback.format_exc()}\n")
            self.say(f"{name} FAILED: {exc} (traceback in {self.dir / 'errors.log'})")
        self.details.setdefault("phase_seconds", {})[name] = round(time.monotonic() - started, 1)

    # --- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        self.server = Server.open()
        self.commit_timestamps = self.server.commit_timestamps()
        self.server.drop_leftovers("bench_")
        self.dbname = f"bench_{self.stamp}"
        self.server.create_database(self.dbname)
        self.url = self.server.url(self.dbname)
        self.latency_log = self.dir / "latency.log"
        self.channels_file = self.dir / "channels.toml"
        self.channels_file.write_text(
            "# Channels of one benchmark run (bench/__main__.py writes this file).\n"
            '[channels.fake]\nbackend = "channels.backends.fake.FakeChannel"\noptions = { latency_ms = 0 }\n\n'
            f'[channels.fake-100ms]\nbackend = "channels.backends.fake.FakeChannel"\n'
            f"options = {{ latency_ms = {SLOW_LATENCY_MS} }}\n\n"
            f'[channels.latency]\nbackend = "bench.latency_channel.LatencyChannel"\n'
            f'options = {{ path = "{self.latency_log}" }}\n\n'
            # Email for ingest_template_vs_plain: only the intake uses it (validation, rendering).
            f'[channels.{templates.CHANNEL}]\nbackend = "channels.backends.email.EmailChannel"\n'
            'options = { from_email = "bench@example.com", '
            'backend = "django.core.mail.backends.dummy.EmailBackend" }\n')
        self.env = service_env(self.url, self.channels_file)
        where = f"the embedded server {self.server.embedded_data_dir}" if self.server.embedded_data_dir else "DATABASE_URL"
        self.say(f"database {self.dbname} on {where}; migrating")
        manage(self.env, "migrate", "--noinput", "-v", "0")
        self.api_key = "ntf_bench_" + secrets.token_urlsafe(24)
        manage(self.env, "create_api_key", dispatch.BENCH_CLIENT, "--key", self.api_key, "--quiet")
        if not self.reference_missing:
            self.ref_db = f"bench_{self.stamp}_ref"
            self.server.create_database(self.ref_db)
            self.reference = pgbench.Reference(self.server, REFERENCE_DIR, self.ref_db)
        self.details["postgresql_settings"] = self.server.settings(
            ["shared_buffers", "synchronous_commit", "max_connections", "fsync"])

    # --- intake ---------------------------------------------------------------------------------

    def intake(self) -> None:
        """Everything that needs the API: single POSTs (plain, then templated), batches, wake-up latency."""
        if not self.phases & {"ingest", "template", "batch", "latency"}:
            return
        self.port = free_port()
        self.say(f"gunicorn on 127.0.0.1:{self.port} ({GUNICORN_WORKERS} workers of 4 threads)")
        api = start_gunicorn(self.env, self.dir, port=self.port)
        self.api = api
        try:
            if "ingest" in self.phases:
                self.phase("ingest", self.ingest_single)
            if "template" in self.phases:
                self.phase("template", self.ingest_template)
            if "batch" in self.phases:
                self.phase("batch", self.ingest_batch)
            if "latency" in self.phases:
                self.phase("latency", self.latency)
        finally:
            api.stop()

    def ingest_single(self) -> None:
        s = self.sizes
        if not self.reference_missing:
            self.say(f"pgbench outbox_tx.sql -c 32 -j 2 -T {s.pgbench_seconds}")
            self.reference.prepare()
            pg_start = self.server.cpu_seconds()
            run = self.reference.outbox_tx(seconds=s.pgbench_seconds)
            pg_end = self.server.cpu_seconds()
            self.figures["pgbench_outbox_tx_tps"] = run.tps
            if pg_start is not None and pg_end is not None:  # the database's CPU per transaction, to compare
                self.details["pgbench_outbox_tx_postgres_cpu_ms_each"] = (pg_end - pg_start) * 1000 / run.transactions
        tool = "wrk" if self.use_wrk else "the Python load generator"
        self.say(f"single POSTs: {tool}, {WRK_CONNECTIONS} connections, {s.wrk_seconds}s")
        if s.wrk_warmup_seconds:
            ingest.warm_up(port=self.port, api_key=self.api_key, seconds=s.wrk_warmup_seconds,
                           connections=WRK_CONNECTIONS, log_dir=self.dir, use_wrk=self.use_wrk)
        cpu = self.cpu_meter()
        result = ingest.single(port=self.port, api_key=self.api_key, seconds=s.wrk_seconds,
                               connections=WRK_CONNECTIONS, log_dir=self.dir,
                               listen_conninfo=self.server.conninfo(self.dbname), use_wrk=self.use_wrk)
        if result.tool != "wrk":
            why = "was not used" if ingest.wrk_available() else "was not installed (make bench installs it with apt-get)"
            self.notes.append(f"wrk {why}: ingest_single_* come from bench/loadgen.py, a Python load generator that "
                              "takes more CPU from the server than wrk would, so they are a lower bound")
        self.figures.update(ingest_single_per_s=result.per_s, ingest_single_p50_ms=result.p50_ms,
                            ingest_single_p99_ms=result.p99_ms)
        self.details.update(cpu("ingest_single", result.requests))
        self.details.update(ingest_single_tool=result.tool, ingest_single_requests=result.requests,
                            ingest_single_errors=result.errors, ingest_single_notifies=result.notifies,
                            ingest_single_gunicorn_workers=GUNICORN_WORKERS)

    def ingest_template(self) -> None:
        """ingest_template_vs_plain: the same single POSTs to an email channel, written out by the
        client ("order") or rendered by the API from a template ("template": subject, text and
        HTML). The two alternate, plain-templated-templated-plain, so that the drift of a shared
        machine and of a growing table weighs on both alike; each rate is the mean of its two legs."""
        s = self.sizes
        name = templates.create(port=self.port, api_key=self.api_key)
        bodies = {"plain": ingest.Body("order", templates.CHANNEL),
                  "templated": ingest.Body("template", templates.CHANNEL, name)}
        tool = "wrk" if self.use_wrk else "the Python load generator"
        self.say(f"templated vs plain single POSTs to {templates.CHANNEL}: {tool}, {WRK_CONNECTIONS} connections, "
                 f"{s.template_seconds}s each of plain, templated, templated, plain")
        # Untimed: each gunicorn worker compiles the template at its first render (and, unless the
        # ingest phase ran, loads its views at its first request).
        for kind in ("templated",) if "ingest" in self.phases else ("plain", "templated"):
            ingest.warm_up(port=self.port, api_key=self.api_key, seconds=max(1, s.wrk_warmup_seconds),
                           connections=WRK_CONNECTIONS, log_dir=self.dir, use_wrk=self.use_wrk, body=bodies[kind])
        legs: dict[str, list[ingest.SingleResult]] = {"plain": [], "templated": []}
        spent: dict[str, list[tuple[float, float | None]]] = {kind: [] for kind in legs}  # CPU s: gunicorn, postgres
        for kind in ("plain", "templated", "templated", "plain"):
            api_start, pg_start = self.api.cpu_seconds(), self.server.cpu_seconds()
            result = ingest.single(port=self.port, api_key=self.api_key, seconds=s.template_seconds,
                                   connections=WRK_CONNECTIONS, log_dir=self.dir, use_wrk=self.use_wrk,
                                   body=bodies[kind], log_name=f"wrk-{kind}-{len(legs[kind]) + 1}")
            pg_end = self.server.cpu_seconds()  # None: the database's processes are not ours to see
            spent[kind].append((self.api.cpu_seconds() - api_start,
                                None if pg_start is None or pg_end is None else pg_end - pg_start))
            legs[kind].append(result)
        for kind, prefix in (("templated", "ingest_template"), ("plain", "ingest_template_plain")):
            results = legs[kind]
            requests = sum(r.requests for r in results)
            postgres = [pg for _, pg in spent[kind]]
            self.details.update({
                f"{prefix}_per_s": sum(r.per_s for r in results) / len(results),
                f"{prefix}_legs_per_s": [round(r.per_s, 1) for r in results],
                f"{prefix}_p50_ms": sum(r.p50_ms for r in results) / len(results),
                f"{prefix}_p99_ms": max(r.p99_ms for r in results),
                f"{prefix}_requests": requests, f"{prefix}_errors": sum(r.errors for r in results),
                f"{prefix}_gunicorn_cpu_ms_each": _per(sum(api for api, _ in spent[kind]), requests),
                f"{prefix}_postgres_cpu_ms_each": None if None in postgres else _per(sum(postgres), requests),
            })
        self.details.update(ingest_template_channel=templates.CHANNEL, ingest_template_name=name)
        self.say(f"  templated {self.details['ingest_template_per_s']:,.0f}/s, "
                 f"plain {self.details['ingest_template_plain_per_s']:,.0f}/s")

    def ingest_throttled(self) -> None:
        """ingest_throttled_vs_plain: what the fleet-wide rate limit costs a single POST. Two
        gunicorns with the same settings but NOTIFY_THROTTLE_RATE: "off" (plain: ENQUEUE) and a
        rate no client reaches (throttled: ENQUEUE_COUNTED takes the counter in the same
        statement), both for the run's one API client, so every request of the throttled legs
        updates the same counter rows (the hot rows' worst case). Legs alternate plain,
        throttled, throttled, plain twice, on one server each, the other idle (a shared machine
        drifts: eight short legs weigh it on both alike); each rate is the mean of its legs.
        BENCH_THROTTLE_SHARDS sets NOTIFY_THROTTLE_SHARDS (default: the service's)."""
        s = self.sizes
        # The smoke run (in make test) checks that the phase works: four legs of a second.
        smoke = s.name == "smoke"
        seconds, rounds = (s.template_seconds, 1) if smoke else (2 * s.template_seconds, 2)
        shards = os.environ.get("BENCH_THROTTLE_SHARDS")
        throttled_env = {**self.env, "NOTIFY_THROTTLE_RATE": "1000000000/minute",
                         **({"NOTIFY_THROTTLE_SHARDS": shards} if shards else {})}
        servers = {}
        try:
            for kind, env in (("plain", {**self.env, "NOTIFY_THROTTLE_RATE": "off"}), ("throttled", throttled_env)):
                port = free_port()
                servers[kind] = (port, start_gunicorn(env, self.dir, port=port))
            tool = "wrk" if self.use_wrk else "the Python load generator"
            self.say(f"throttled vs plain single POSTs: {tool}, {WRK_CONNECTIONS} connections, {seconds}s each of "
                     f"plain, throttled, throttled, plain{', twice' if rounds == 2 else ''} "
                     f"(shards: {shards or 'default'})")
            for kind, (port, _) in servers.items():  # untimed: workers load their views and connect
                ingest.warm_up(port=port, api_key=self.api_key, seconds=max(1, s.wrk_warmup_seconds),
                               connections=WRK_CONNECTIONS, log_dir=self.dir, use_wrk=self.use_wrk)
            legs: dict[str, list[ingest.SingleResult]] = {"plain": [], "throttled": []}
            for kind in ("plain", "throttled", "throttled", "plain") * rounds:
                port, _ = servers[kind]
                legs[kind].append(ingest.single(port=port, api_key=self.api_key, seconds=seconds,
                                                connections=WRK_CONNECTIONS, log_dir=self.dir, use_wrk=self.use_wrk,
                                                log_name=f"wrk-{kind}-{len(legs[kind]) + 1}"))
        finally:
            for _, process in servers.values():
                process.stop()
        for kind, prefix in (("throttled", "ingest_throttled"), ("plain", "ingest_throttled_plain")):
            results = legs[kind]
            self.details.update({
                f"{prefix}_per_s": sum(r.per_s for r in results) / len(results),
                f"{prefix}_legs_per_s": [round(r.per_s, 1) for r in results],
                f"{prefix}_p50_ms": sum(r.p50_ms for r in results) / len(results),
                f"{prefix}_p99_ms": max(r.p99_ms for r in results),
                f"{prefix}_requests": sum(r.requests for r in results),
                f"{prefix}_errors": sum(r.errors for r in results),
            })
        self.details["ingest_throttled_shards"] = int(shards) if shards else "default"
        self.say(f"  throttled {self.details['ingest_throttled_per_s']:,.0f}/s, "
                 f"plain {self.details['ingest_throttled_plain_per_s']:,.0f}/s")

    def cpu_meter(self) -> Callable[[str, int], dict[str, float | None]]:
        """Starts counting the CPU time of gunicorn (all workers) and of the database server;
        the function returned gives each per request or notification, in milliseconds: where
        the intake's time goes, Python or PostgreSQL (the rest of the machine is not ours)."""
        api_start, pg_start = self.api.cpu_seconds(), self.server.cpu_seconds()

        def per(prefix: str, count: int) -> dict[str, float | None]:
            api, pg = self.api.cpu_seconds() - api_start, self.server.cpu_seconds()
            return {f"{prefix}_gunicorn_cpu_ms_each": api * 1000 / count if count else None,
                    f"{prefix}_postgres_cpu_ms_each": (pg - pg_start) * 1000 / count
                    if count and pg is not None and pg_start is not None else None}

        return per

    def ingest_batch(self) -> None:
        s = self.sizes
        self.say(f"batch POSTs: {s.batch_requests} x 1,000 notifications, {s.batch_clients} clients")
        cpu = self.cpu_meter()
        per_s, accepted = ingest.batch(port=self.port, api_key=self.api_key, requests=s.batch_requests,
                                       clients=s.batch_clients)
        self.details.update(cpu("ingest_batch", accepted))
        self.figures["ingest_batch_per_s"] = per_s
        self.details.update(ingest_batch_notifications=accepted, ingest_batch_clients=s.batch_clients)

    def latency(self) -> None:
        s = self.sizes
        self.say(f"latency: {LATENCY_RATE_PER_S}/s for {s.latency_seconds}s, {DISPATCH_PROCESSES} idle dispatchers")
        # The intake measurements left their notifications queued (for the `fake` channel, which
        # nothing serves here). They are not part of this measurement: with them, every claim of
        # the `latency` channel would first scan past them all (outbox_claim_idx does not lead
        # with the channel), which measures a backlog, not the wake-up.
        dispatch.reset_outbox(self.server, self.dbname)
        result = latency.measure(server=self.server, dbname=self.dbname, env=self.env, log_dir=self.dir,
                                 port=self.port, api_key=self.api_key, log_path=self.latency_log,
                                 seconds=s.latency_seconds, rate=LATENCY_RATE_PER_S, processes=DISPATCH_PROCESSES,
                                 commit_timestamps=self.commit_timestamps)
        self.figures.update(latency_p50_ms=result.p50_ms, latency_p99_ms=result.p99_ms)
        if result.origin != "commit":
            self.notes.append("latency_*: measured from the notification's created_at (its transaction's start), "
                              "since the server does not track commit timestamps: a little more than from the commit")
        self.details.update(latency_from=result.origin, latency_samples=result.samples, latency_max_ms=result.max_ms,
                            latency_from_202_p50_ms=result.from_response_p50_ms,
                            latency_from_202_p99_ms=result.from_response_p99_ms)

    # --- delivery -------------------------------------------------------------------------------

    def fill(self, count: int, channel: str) -> None:
        dispatch.wait_for_idle_intake(self.server, self.dbname)  # an ingest phase's last requests
        dispatch.reset_outbox(self.server, self.dbname)
        started = time.monotonic()
        dispatch.enqueue_bulk(count, channel=channel)
        dispatch.vacuum(self.server, self.dbname)
        self.say(f"  {count:,} queued for {channel} in {time.monotonic() - started:.1f}s")

    def drain(self, name: str, args: list[str], rows: int, channel: str, *, resources: bool = False) -> dispatch.Drain:
        self.fill(rows, channel)
        self.say(f"  draining with run_dispatchers {' '.join(args)}")
        result = dispatch.drain(server=self.server, dbname=self.dbname, env=self.env, log_dir=self.dir, name=name,
                                args=[*args, "--channels", channel], expected=rows, measure_resources=resources)
        self.say(f"  {result.delivered:,} in {result.seconds:.2f}s: {result.per_s:,.0f}/s")
        self.details[f"{name}_drain"] = {
            "rows": result.delivered, "seconds": result.seconds, "per_s": result.per_s,
            "window_seconds": result.window_seconds, "dispatcher_cpu_seconds": result.dispatcher_cpu_seconds,
            "postgres_cpu_seconds": result.postgres_cpu_seconds, "peak_rss_mib": result.peak_rss_mib,
            "supervisor_rss_mib": result.supervisor_rss_mib, "commits": result.commits,
            "table_writes": result.table_writes, "wal_bytes": result.wal_bytes,
            # Per delivery, to compare with the references' (an approximation: the CPU window
            # also holds the processes' start and the wait for the first claim).
            "dispatcher_cpu_ms_each": _per(result.dispatcher_cpu_seconds, result.delivered),
            "postgres_cpu_ms_each": _per(result.postgres_cpu_seconds, result.delivered),
        }
        return result

    def dispatch_noop(self) -> None:
        s = self.sizes
        if not self.reference_missing:
            self.say(f"pgbench lease100_ack_batch.sql -c 1 on {s.lease_fill_rows:,} rows")
            rows_per_s, _, cpu_ms = self.reference.lease_ack_rows_per_s(fill_rows=s.lease_fill_rows)
            self.figures["pgbench_lease_ack_rows_per_s"] = rows_per_s
            self.details["pgbench_lease_ack_postgres_cpu_ms_each"] = cpu_ms
        self.say(f"dispatch: {s.drain_rows:,} no-op deliveries, {DISPATCH_PROCESSES} processes")
        args = ["--processes", str(DISPATCH_PROCESSES), "--threads", str(DISPATCH_THREADS), "--batch-size", "100"]
        result = self.drain("dispatch_noop", args, s.drain_rows, "fake", resources=True)
        self.figures.update(dispatch_noop_per_s=result.per_s, dispatcher_rss_mb=result.peak_rss_mib,
                            commits_per_notification=result.commits_per_notification,
                            row_versions_per_delivery=result.row_versions_per_delivery,
                            wal_bytes_per_delivery=result.wal_bytes_per_delivery)

    def dispatch_batch1(self) -> None:
        s = self.sizes
        self.say(f"dispatch, batch size 1: {s.batch1_rows:,} no-op deliveries")
        args = ["--processes", str(DISPATCH_PROCESSES), "--threads", str(DISPATCH_THREADS), "--batch-size", "1"]
        result = self.drain("dispatch_batch1", args, s.batch1_rows, "fake")
        self.figures["dispatch_noop_batch1_per_s"] = result.per_s
        if s.batch1_rows != s.drain_rows:
            self.notes.append(f"dispatch_noop_batch1_per_s drains {s.batch1_rows:,} rows, not {s.drain_rows:,} "
                              f"(a row per transaction is slow; the rate is what compares)")

    def dispatch_slow(self) -> None:
        s = self.sizes
        self.say(f"dispatch through a {SLOW_LATENCY_MS} ms channel: {s.slow_rows:,} rows, 1 process, "
                 f"{DISPATCH_THREADS} threads")
        result = self.drain("dispatch_100ms", ["--processes", "1", "--threads", str(DISPATCH_THREADS)],
                            s.slow_rows, "fake-100ms")
        self.figures["dispatch_100ms_per_s_per_process"] = result.per_s
        self.details.update(dispatch_100ms_threads=DISPATCH_THREADS,
                            dispatch_100ms_ceiling_per_s=DISPATCH_THREADS / (SLOW_LATENCY_MS / 1000))

    def procrastinate(self) -> None:
        s = self.sizes
        if not procrastinate_ref.available():
            self.notes.append("procrastinate is not installed (pip install -r requirements-bench.txt, which "
                              "make bench does): procrastinate_noop_per_s and dispatch_vs_procrastinate are null")
            return
        name = f"bench_{self.stamp}_procrastinate"
        self.server.create_database(name)
        self.say(f"procrastinate {procrastinate_ref.version()}: {s.procrastinate_jobs:,} no-op jobs, "
                 f"{DISPATCH_PROCESSES} workers x concurrency {DISPATCH_THREADS}")
        result = procrastinate_ref.run(server=self.server, dbname=name, jobs=s.procrastinate_jobs,
                                       processes=DISPATCH_PROCESSES, concurrency=DISPATCH_THREADS, log_dir=self.dir,
                                       max_seconds=s.procrastinate_max_seconds)
        self.say(f"  {result.jobs:,} in {result.seconds:.2f}s: {result.per_s:,.0f}/s")
        self.figures["procrastinate_noop_per_s"] = result.per_s
        self.details.update(procrastinate_version=procrastinate_ref.version(), procrastinate_jobs_drained=result.jobs,
                            procrastinate_jobs_deferred=result.deferred, procrastinate_seconds=result.seconds,
                            procrastinate_defer_seconds=result.defer_seconds)
        if result.capped:
            self.notes.append(f"procrastinate_noop_per_s: {result.deferred:,} jobs deferred, its workers stopped after "
                              f"{s.procrastinate_max_seconds}s with {result.jobs:,} done (the rate is of those; "
                              f"draining all would not fit the run's time budget)")

    def unindexed_lease_reference(self) -> None:
        """lease100_ack_batch.sql on schema.sql as shipped (plus the column it needs): its ack
        scans the table. Informative only (details), to show why the harness adds an index."""
        self.say("pgbench lease100_ack_batch.sql without an index on locked_by (informative), 3 s")
        rows_per_s, _, _ = self.reference.lease_ack_rows_per_s(fill_rows=self.sizes.lease_fill_rows,
                                                                index_locked_by=False, max_seconds=3)
        self.details["pgbench_lease_ack_unindexed_rows_per_s"] = rows_per_s

    def channel_policy(self) -> None:
        s = self.sizes
        self.say(f"policy: a budget of {policy.RATE}/s over {s.budget_rows:,} sends (2 supervisors x 2 processes), "
                 f"then a {s.outage_seconds:g} s outage with {s.breaker_rows:,} due")
        dispatch.reset_outbox(self.server, self.dbname)
        result = policy.measure(server=self.server, dbname=self.dbname, env=self.env, run_dir=self.dir,
                                budget_rows=s.budget_rows, outage_seconds=s.outage_seconds, breaker_rows=s.breaker_rows)
        self.figures.update(budget_send_rate_ratio=result.budget_send_rate_ratio,
                            budget_429_fraction=result.budget_429_fraction,
                            breaker_attempts_during_outage=result.breaker_attempts_during_outage,
                            breaker_recovery_s=result.breaker_recovery_s)
        self.details.update(budget_rate_per_s=policy.RATE, breaker_cool_down_s=policy.COOL_DOWN,
                            breaker_outage_s=s.outage_seconds, policy=result.details)
        self.say(f"  budget {result.details['budget']}; breaker {result.details['breaker']}")

    # --- the whole run --------------------------------------------------------------------------

    def execute(self, json_path: Path) -> int:
        load_start = os.getloadavg()
        try:
            self.setup()
            self.intake()
            if "throttle" in self.phases:
                self.phase("throttle", self.ingest_throttled)
            if self.phases & {"dispatch", "batch1", "slow"}:
                dispatch.setup_django(self.url, self.channels_file)
                for name, body in (("dispatch", self.dispatch_noop), ("batch1", self.dispatch_batch1),
                                   ("slow", self.dispatch_slow)):
                    if name in self.phases:
                        self.phase(name, body)
            if "procrastinate" in self.phases:
                self.phase("procrastinate", self.procrastinate)
            if "policy" in self.phases:
                dispatch.setup_django(self.url, self.channels_file)
                self.phase("policy", self.channel_policy)
            if self.phases & set(AT_SCALE_PHASES):
                dispatch.setup_django(self.url, self.channels_file)
                for name, body in (("history", history_phase), ("claim_backlog", claim_phase),
                                   ("latency_1000", latency_1000_phase), ("stats", stats_phase)):
                    if name in self.phases:
                        self.phase(name, lambda body=body: body(self))
            if self.sizes.unindexed_lease_reference and not self.reference_missing and "dispatch" in self.phases:
                self.phase("unindexed_lease_reference", self.unindexed_lease_reference)
        finally:
            server = getattr(self, "server", None)
            if server is not None:
                if self.keep_db:
                    self.notes.append(f"databases kept: {', '.join(server.created)}")
                else:
                    server.drop_created()
                server_version = server.version()
                server.stop_if_started_here()
            else:
                server_version = None
        if self.figures.get("pgbench_lease_ack_rows_per_s") is not None:
            self.notes.append("pgbench_lease_ack_rows_per_s: schema.sql lacks the locked_by column that "
                              "lease100_ack_batch.sql sets; the harness adds it with a partial index "
                              "ON outbox (locked_by) WHERE status = 'sending' (without one the ack is a table scan)")
        self.notes.append("every figure is measured in this run on this shared 2-core machine; compare the ratios")
        report.add_ratios(self.figures, self.details)
        self.details["goals"] = report.goal_status(self.figures, self.details)
        self.details["total_seconds"] = round(time.monotonic() - self.started, 1)
        machine = report.machine(server_version, self.notes, {
            "load_average_at_start": [round(x, 2) for x in load_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "database": "DATABASE_URL" if self.external_db else f"embedded (pgserver), data in {BENCH_PGDATA}",
        })
        report.write_json(json_path, self.figures, machine, self.details)
        print(report.table(self.figures, self.details))
        print(f"\n{self.sizes.name} run in {self.details['total_seconds']:.0f}s; results in {json_path}; "
              f"logs in {self.dir}")
        for note in self.notes:
            print(f"- {note}")
        return 1 if self.failed else 0


def _per(seconds: float | None, count: int) -> float | None:
    """Milliseconds per item."""
    return None if seconds is None or not count else seconds * 1000 / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1].replace("\n", " "))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, about 2 to 3 minutes (make bench-quick)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every piece runs")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures ({DEFAULT_JSON})")
    parser.add_argument("--only", default=",".join(PHASES),
                        help=f"comma-separated phases to run (default all: {','.join(PHASES)})")
    parser.add_argument("--keep-db", action="store_true", help="keep the run's databases for inspection")
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto",
                        help="for single POSTs: wrk, the Python one, or wrk when installed (default)")
    args = parser.parse_args(argv)
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = phases - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    os.chdir(Path(__file__).resolve().parent.parent)
    if not os.environ.get("DATABASE_URL"):
        with run_lock(BENCH_PGDATA):
            return Run(sizes, phases, args.keep_db, args.load_generator).execute(args.json)
    if args.load_generator == "wrk" and not ingest.wrk_available():
        parser.error("--load-generator wrk: wrk is not installed (make bench installs it)")
    return Run(sizes, phases, args.keep_db, args.load_generator).execute(args.json)


if __name__ == "__main__":
    sys.exit(main())
