"""One cluster run, start to verdict.

1. The hosts (cluster.network): network namespaces on a private bridge.
2. db: PostgreSQL and the delay proxy in front of it (the dispatchers' way in: +20 ms round
   trip); pool: PgBouncer (transaction mode, the API hosts' way in); api1, api2: gunicorn;
   lb: HAProxy over them; disp1..3: `run_dispatchers`; load: the chaos provider (the channel
   `cluster` sends to it) and, during the load, the chaos load driver (cluster.load_host).
3. The load through lb while the faults (cluster.faults) run; the drain; the dispatchers
   stopped; the verdict by the chaos suite's checks (chaos.checks) on what the client was
   acknowledged, what the database holds and what the provider received, plus the cluster's
   own: outcomes recorded by a dispatcher after its row was taken over.
4. Measurements on the same hosts, faults over: the drain of a backlog by the three
   dispatcher hosts through the delay proxy against the same drain connected directly, and
   single POSTs through lb and pool against the API hosts connected directly, legs
   alternated.

Whatever happens, every process in the hosts is killed and the hosts are removed before
`run()` returns (also on Ctrl-C or SIGTERM); the next run removes what a runner that died left.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from chaos.checks import LEASE_LOST, evaluate
from chaos.database import RunDatabase
from chaos.fleet import DispatcherFleet
from chaos.load import RequestOutcome, plan_requests
from chaos.processes import ManagedProcess, ProcessRegistry
from chaos.provider import FaultRates

from . import network as net
from .faults import ClusterFaults, build_schedule
from .services import (
    LB_PORT,
    PG_PORT,
    POOL_PORT,
    Postgres,
    ensure_packages,
    haproxy_argv,
    haproxy_config,
    pgbouncer_argv,
    pgbouncer_config,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data" / "cluster"
DEFAULT_RESULTS = DATA / "results.json"
CHANNEL = "cluster"  # the load's channel: the chaos provider on the load host
DRAIN_CHANNEL = "drain"  # the measurements' channel: sends nothing (channels.backends.fake)
API_PORT, API_DIRECT_PORT, PROVIDER_PORT, PROXY_PORT = 8000, 8001, 9000, 5433
DISPATCHER_HOSTS = ["disp1", "disp2", "disp3"]
API_HOSTS = ["api1", "api2"]
# Answers a client may get from the load balancer while an API host or the database is out:
# 503 with Retry-After (from the API or from HAProxy), 502/504 (a host cut off mid-request).
EXPECTED_RETRY_ANSWERS = {"429", "502", "503", "504"}


@dataclass
class Config:
    """Everything a run can vary (python -m cluster --help describes each)."""

    notifications: int = 10_000
    duration: float | None = None  # seconds of load; None: notifications / 150, at least 30
    api_workers: int = 2  # per API host
    threads: int = 16
    batch_size: int = 100
    lease_seconds: float = 5.0  # the fault run's: a host cut off past its lease within seconds
    drain_lease_seconds: float = 60.0  # the measured drains': the default (OUTBOX_LEASE_SECONDS)
    send_timeout: float = 1.5
    rtt_ms: float = 20.0
    cut_extra: float = 3.0  # a dispatcher host is cut off for the lease plus this
    api_cut_seconds: float = 5.0
    db_down_seconds: float = 3.0
    pause: float = 2.0  # before a killed dispatcher host is started again
    max_attempts: int = 25
    drain_rows: int = 5_000  # per drain leg
    drain_pairs: int = 2  # direct/delayed leg pairs
    throughput_seconds: float = 5.0  # per API throughput leg
    throughput_pairs: int = 2
    drain_timeout: float = 180.0
    seed: int | None = None
    json_path: Path = DEFAULT_RESULTS
    workdir: Path = DATA / "run"

    def load_duration(self) -> float:
        # About 150 notifications a second (as the chaos run): what this 2-core machine takes
        # while the faults run; at least 30 s, so that the faults (one after another, the cut
        # alone lasts lease + cut_extra) all meet the load.
        return self.duration if self.duration is not None else max(30.0, self.notifications / 150)


class Runner:
    """Runs one cluster run (see the module docstring); `run()` returns the results."""

    def __init__(self, config: Config, *, log: Callable[[str], None] | None = None):
        self.config = config
        self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self._t_start = time.monotonic()
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.stop = threading.Event()
        self.network = net.Network()
        self.processes: list[ManagedProcess] = []
        self.registry: ProcessRegistry | None = None
        self.postgres: Postgres | None = None
        self.database: RunDatabase | None = None
        self.provider: ManagedProcess | None = None
        self.pool: ManagedProcess | None = None
        self.api_key = "ntf_" + secrets.token_urlsafe(24)
        self.lb_url = f"http://{self.network['lb'].address}:{LB_PORT}"
        self.provider_url = f"http://{self.network['load'].address}:{PROVIDER_PORT}"

    def log(self, text: str) -> None:
        self._log(f"[cluster {time.monotonic() - self._t_start:6.1f}s] {text}")

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        results: dict[str, Any] = {"result": "error", "config": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "duration": config.load_duration(), "seed": self.seed}}
        lock = None
        passed = False
        try:
            lock = self._lock()
            net.preflight()
            ensure_packages()
            self._prepare_workdir()
            results.update(self._run())
            passed = results["result"] == "pass"
        except KeyboardInterrupt:
            results["error"] = "interrupted"
            self.log("interrupted: cleaning up")
        except Exception as exc:
            results["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"run failed: {results['error']}")
        finally:
            self.stop.set()
            self._clean_up(results, passed)
            if lock is not None:
                lock.close()
            results.setdefault("timing", {})["total_seconds"] = round(time.monotonic() - self._t_start, 1)
        return results

    def _run(self) -> dict[str, Any]:
        config = self.config
        self.log("creating the hosts: " + ", ".join(f"{h.name} {h.address}" for h in self.network.hosts.values()))
        self.network.create()
        self._start_database()
        self._start_services()
        fleet = self._fleet("dispatchers", delayed=True)
        fleet.start()
        fleet.wait_ready(timeout=90)
        self.log(f"running: lb {self.lb_url}, {len(API_HOSTS)} API hosts x {config.api_workers} workers via PgBouncer, "
                 f"{len(DISPATCHER_HOSTS)} dispatcher hosts via +{config.rtt_ms:g} ms; seed {self.seed}")

        started = time.monotonic()
        load, faults = self._load_and_faults(fleet)
        load_seconds = time.monotonic() - started
        drained, drain_seconds = self._wait_drained()
        self.log(f"{'drained' if drained else 'NOT drained'} {drain_seconds:.1f}s after the load")
        fleet.wait_ready(timeout=60)
        exit_codes = fleet.stop_all(timeout=config.lease_seconds + 15)
        provider_requests = _get_json(f"{self.provider_url}/requests")["requests"]
        verdict = self._verdict(load, faults, fleet, provider_requests, exit_codes, drained)

        self.log("measuring: backlog drains, direct and through the delay proxy; API through lb and pool, and direct")
        drains = self._measure_drains()
        throughput = self._measure_throughput()
        figures = {
            "dispatch_rtt20_vs_local": _ratio(drains["delayed_per_s"], drains["direct_per_s"]),
            "api_via_lb_vs_direct": _ratio(throughput["via_lb_per_s"], throughput["direct_per_s"]),
        }
        checks = verdict.pop("checks")
        result = "pass" if drained and all(value == 0 for value in checks.values()) else "fail"
        return {
            "result": result,
            # The keys that the README's table and the issue name, at the top.
            "lost": checks["lost"],
            "stuck": checks["stuck"],
            "idempotency_violations": checks["idempotency_violations"],
            "overlapping_sends": checks["overlapping_sends"],
            "stale_outcomes_recorded": checks["stale_outcomes_recorded"],
            "duplicates": verdict["delivery"]["duplicates"],
            **figures,
            "checks": checks,
            **verdict,
            "measurements": {"drains": drains, "api_throughput": throughput},
            "timing": {"load_seconds": round(load_seconds, 1), "drain_seconds": round(drain_seconds, 1),
                       "drained": drained},
        }

    # --- setting up -------------------------------------------------------------------------------

    def _start_database(self) -> None:
        config, db = self.config, self.network["db"]
        self.postgres = Postgres(db, DATA / "pg")
        self.log("PostgreSQL on db: initdb, start")
        self.postgres.init()
        self.postgres.start()
        self.database = RunDatabase(pgdata=DATA / "pg", external_url=self.postgres.admin_url)
        self.database.open()
        self._start("delay-proxy", db.argv(sys.executable, "-m", "cluster.delay_proxy",
                                          "--listen", f"{db.address}:{PROXY_PORT}", "--target", f"127.0.0.1:{PG_PORT}",
                                          "--delay-ms", str(config.rtt_ms / 2)), os.environ.copy())
        env = self._env(self._db_url("direct"))
        self.log(f"migrating {self.database.name}")
        self._manage(env, "migrate", "--noinput", "-v", "0")
        self._manage(env, "create_api_key", "cluster", "--key", self.api_key, "--quiet")

    def _start_services(self) -> None:
        workdir = self.config.workdir
        load, pool, lb = self.network["load"], self.network["pool"], self.network["lb"]
        zero = [arg for name in asdict(FaultRates()) for arg in (f"--{name.replace('_', '-')}", "0")]
        self.provider = self._start("provider", load.argv(
            sys.executable, "-m", "chaos.provider", "--host", load.address, "--port", str(PROVIDER_PORT), *zero,
            "--latency-ms", "2", "20", "--seed", str(self.seed)), os.environ.copy())
        self.pool = self._start("pgbouncer", pgbouncer_argv(pool, pgbouncer_config(
            workdir, host=pool, db=self.network["db"], pool_size=20)), os.environ.copy())
        api_env = {**self._env(self._db_url("pool")), "DATABASE_PREPARE_THRESHOLD": "off"}
        for name in API_HOSTS:
            self._start(name, self._gunicorn(name, API_PORT), api_env)
        self._start("haproxy", haproxy_argv(lb, haproxy_config(
            workdir, host=lb, api_hosts=[self.network[n] for n in API_HOSTS], api_port=API_PORT)), os.environ.copy())
        _wait_http(f"{self.provider_url}/health", self.provider, timeout=30)
        for name in API_HOSTS:
            _wait_http(f"http://{self.network[name].address}:{API_PORT}/readyz", self._process(name), timeout=90)
        _wait_http(f"{self.lb_url}/readyz", self._process("haproxy"), timeout=30)

    def _gunicorn(self, host: str, port: int) -> list[str]:
        return self.network[host].argv(
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "notifications_project" / "gunicorn.conf.py"),
            "notifications_project.wsgi", "--bind", f"{self.network[host].address}:{port}",
            "--workers", str(self.config.api_workers), "--timeout", "60", "--graceful-timeout", "10")

    def _fleet(self, name: str, *, delayed: bool, log_level: str = "INFO",
               lease_seconds: float | None = None) -> DispatcherFleet:
        config = self.config
        lease_seconds = lease_seconds or config.lease_seconds
        env = {**self._env(self._db_url("delayed" if delayed else "direct")), "LOG_LEVEL": log_level,
               "OUTBOX_LEASE_SECONDS": str(lease_seconds)}
        return DispatcherFleet(
            len(DISPATCHER_HOSTS), name=name, env=env,
            cwd=ROOT, workdir=config.workdir, registry=self.registry,
            hosts=[self.network[host].argv() for host in DISPATCHER_HOSTS],
            args=["--threads", str(config.threads), "--batch-size", str(config.batch_size),
                  "--lease-seconds", str(lease_seconds)],
        )

    def _db_url(self, way: str) -> str:
        """The run's database: "direct" (db:5432), "delayed" (the delay proxy) or "pool"."""
        address, port = {"direct": (self.network["db"].address, PG_PORT),
                         "delayed": (self.network["db"].address, PROXY_PORT),
                         "pool": (self.network["pool"].address, POOL_PORT)}[way]
        return f"postgresql://postgres@{address}:{port}/{self.database.name}"

    def _env(self, database_url: str) -> dict[str, str]:
        config = self.config
        hosts = [self.network[name].address for name in ("lb", *API_HOSTS)]
        return {
            **{k: v for k, v in os.environ.items() if k != "NOTIFY_EMBEDDED_PGDATA"},
            "DATABASE_URL": database_url,
            "NOTIFY_CHANNELS_FILE": str(config.workdir / "channels.toml"),
            "DJANGO_ENV": "development",
            "DJANGO_ALLOWED_HOSTS": ",".join([*hosts, "127.0.0.1", "localhost"]),
            "NOTIFY_THROTTLE_RATE": "1000000/minute",
            "OUTBOX_LEASE_SECONDS": str(config.lease_seconds),
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.5",
            "OUTBOX_RETRY_BASE_SECONDS": "0.2",
            "OUTBOX_RETRY_CAP_SECONDS": "2",
            "OUTBOX_MAX_ATTEMPTS": str(config.max_attempts),
            "DATABASE_CONNECT_TIMEOUT": "3",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",  # one record per line: chaos.fleet reads the dispatchers' logs
            "PYTHONUNBUFFERED": "1",
        }

    # --- the load and the faults ------------------------------------------------------------------

    def _load_and_faults(self, fleet: DispatcherFleet) -> tuple[dict[str, Any], ClusterFaults]:
        config, workdir = self.config, self.config.workdir
        duration = config.load_duration()
        plan = plan_requests(config.notifications, rng=self.rng, channel=CHANNEL)
        (workdir / "plan.json").write_text(json.dumps([asdict(request) for request in plan]))
        outcomes_path = workdir / "outcomes.json"
        faults = ClusterFaults(
            network=self.network, fleet=fleet, dispatcher_hosts=DISPATCHER_HOSTS, database=self.database,
            postgres=self.postgres, pool=self.pool, lease_seconds=config.lease_seconds, cut_extra=config.cut_extra,
            api_cut_seconds=config.api_cut_seconds, db_down_seconds=config.db_down_seconds, pause=config.pause,
            log=self.log)
        schedule = build_schedule(duration)
        self.log(f"load: {config.notifications} notifications in {len(plan)} requests over {duration:.0f}s from "
                 f"the load host through lb; faults: {', '.join(f'{kind}@{at:.0f}s' for at, kind in schedule)}")
        driver = self._start("load", self.network["load"].argv(
            sys.executable, "-m", "cluster.load_host", "submit", "--plan", str(workdir / "plan.json"),
            "--out", str(outcomes_path), "--base-url", self.lb_url, "--duration", str(duration),
            "--clients", "8", "--seed", str(self.seed)), {**os.environ, "CLUSTER_API_KEY": self.api_key})
        t0 = time.monotonic()
        fault_thread = threading.Thread(target=faults.run, args=(schedule,), kwargs={"t0": t0, "stop": self.stop},
                                        name="faults", daemon=True)
        fault_thread.start()
        deadline = t0 + duration + 300  # bounded: a request gives up after 120 s, the faults are finite
        next_progress = t0 + 5
        while (driver.alive() or fault_thread.is_alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
            if time.monotonic() >= next_progress:
                self._progress()
                next_progress += 5
        if driver.alive() or fault_thread.is_alive():
            raise RuntimeError("the load or the faults did not finish in time")
        if driver.wait(0) != 0 or not outcomes_path.exists():
            raise RuntimeError(f"the load driver failed:\n{driver.log()[-3000:]}")
        load = json.loads(outcomes_path.read_text())
        acked = sum(len(outcome["ids"]) for outcome in load["outcomes"])
        self.log(f"load done in {load['seconds']:.1f}s: {acked} notifications acknowledged; answers "
                 f"{load['stats']['answers']}")
        return load, faults

    def _verdict(self, load: dict[str, Any], faults: ClusterFaults, fleet: DispatcherFleet,
                 provider_requests: list[list[Any]], exit_codes: dict[str, int | None], drained: bool) -> dict[str, Any]:
        """The chaos suite's checks, and the cluster's own (see the module docstring)."""
        outcomes = [RequestOutcome(**outcome) for outcome in load["outcomes"]]
        sends = fleet.sends()
        evaluation = evaluate(self.database, outcomes, provider_requests, channel=CHANNEL,
                              max_attempts=self.config.max_attempts,
                              send_ends={(s["pid"], s["id"], s["attempt"]): s["ended_at"] for s in sends})
        chaos_checks = evaluation.pop("checks")
        # An outcome that a dispatcher recorded for an attempt after another dispatcher had
        # taken that attempt's row over from it (the takeover's event names the old holder).
        late_recorded = self.database.query(
            "SELECT count(*) FROM notification_event late JOIN notification_event lost "
            "ON lost.notification_id = late.notification_id AND lost.attempt = late.attempt "
            "AND lost.status = 'retrying' AND strpos(lost.error, %s) > 0 "
            "AND late.dispatcher = lost.dispatcher AND late.created_at > lost.created_at AND late.id <> lost.id",
            [LEASE_LOST])[0][0]
        answers = load["stats"]["answers"]
        unexpected = sum(n for status, n in answers.items()
                         if status.isdigit() and not status.startswith("2") and status not in EXPECTED_RETRY_ANSWERS)
        dispatchers = {**fleet.log_summary(), "final_exit_codes": exit_codes}
        cut_hosts = [e["host"] for e in faults.events if e["kind"] == "dispatcher_cut"]
        fenced_after_cut = sum(_fenced_outcomes(fleet.supervisors[DISPATCHER_HOSTS.index(host)].log())
                               for host in cut_hosts)
        not_injected = len(faults.errors) + sum(1 for kind, n in faults.counts.items() if n == 0)
        if faults.rows_held_at_cut[0] == 0:
            not_injected += 1  # the cut must meet work in flight
        checks = {
            "lost": chaos_checks["lost"],
            "stuck": chaos_checks["stuck"],
            "idempotency_violations": chaos_checks["idempotency_violations"],
            "overlapping_sends": chaos_checks["sends_overlapping_a_takeover"],
            "same_attempt_sent_twice": chaos_checks["same_attempt_sent_twice"],
            "sends_after_recorded_success": chaos_checks["sends_after_recorded_success"],
            "stale_outcomes_recorded": chaos_checks["stale_outcomes"] + late_recorded,
            "unexplained_duplicates": chaos_checks["unexplained_duplicates"],
            "attempts_over_the_cap": chaos_checks["attempts_over_the_cap"],
            "api_unexpected_answers": unexpected,
            "api_unacknowledged_requests": sum(not o.acknowledged for o in outcomes),
            "dispatcher_crashes": dispatchers.get("processes_crashed", 0)
                                  + sum(1 for code in exit_codes.values() if code != 0),
            "faults_not_injected": not_injected,
        }
        return {
            "checks": checks,
            **evaluation,
            "fencing": {"rows_held_by_the_cut_host": faults.rows_held_at_cut[0],
                        "rows_being_sent_by_the_cut_host": faults.rows_held_at_cut[1],
                        "outcomes_fenced_off_on_the_cut_host": fenced_after_cut,
                        "outcomes_fenced_off_in_all": dispatchers.get("fenced_outcomes", 0),
                        "late_outcomes_recorded": late_recorded},
            "faults": {"counts": faults.counts, "errors": faults.errors, "events": faults.events},
            "api": {"requests": len(outcomes), **load["stats"],
                    "replayed": sum(o.replayed for o in outcomes),
                    "unacknowledged_samples": [o.error for o in outcomes if not o.acknowledged][:10]},
            "dispatchers": dispatchers,
        }

    # --- measurements -----------------------------------------------------------------------------

    def _measure_drains(self) -> dict[str, Any]:
        """The same backlog drained by the three dispatcher hosts connected directly and through
        the delay proxy, legs alternated: rows per second from the first send to the last.

        At the default lease (drain_lease_seconds), not the fault run's 5 s: a lane holds at
        most what its threads could send in one lease if every send ran to its deadline
        (outbox.dispatcher.Lane), 48 rows at 5 s, and 48 rows a round trip is what one
        process then drains however quick its sends. The backlog is held back (due in an
        hour) until every dispatcher process runs, then made due at once: the rate is the
        fleet's, not that of the first process to start."""
        config = self.config
        legs: dict[str, list[float]] = {"direct": [], "delayed": []}
        for pair in range(config.drain_pairs):
            for way in ("direct", "delayed"):
                leg = f"{way}-{pair}"
                self._enqueue_drain(leg, config.drain_rows)
                self.database.query("UPDATE outbox SET run_at = now() + interval '1 hour' WHERE channel = %s",
                                    [DRAIN_CHANNEL])
                # WARNING, as in make bench: no log line per delivery (the fault run reads them).
                fleet = self._fleet(f"drain-{leg}", delayed=way == "delayed", log_level="WARNING",
                                    lease_seconds=config.drain_lease_seconds)
                fleet.start()
                self._wait_running(fleet)
                self.database.query("UPDATE outbox SET run_at = now() WHERE channel = %s", [DRAIN_CHANNEL])
                self.database.query("SELECT pg_notify('outbox', '')")  # as the intake's commit does
                deadline = time.monotonic() + config.drain_timeout
                while self.database.query("SELECT count(*) FROM outbox")[0][0] and time.monotonic() < deadline:
                    time.sleep(0.2)
                fleet.stop_all(timeout=config.lease_seconds + 15)
                count, seconds = self.database.query(
                    "SELECT count(*), extract(epoch FROM max(sent_at) - min(sent_at))::float8 FROM notification "
                    "WHERE channel = %s AND metadata->>'leg' = %s AND status = 'sent'", [DRAIN_CHANNEL, leg])[0]
                if count != config.drain_rows or not seconds:
                    raise RuntimeError(f"drain leg {leg}: {count} of {config.drain_rows} sent")
                legs[way].append(count / seconds)
                self.log(f"  drain {leg}: {count} rows at {count / seconds:,.0f}/s")
        return {"rows_per_leg": config.drain_rows, "direct_legs_per_s": [round(r) for r in legs["direct"]],
                "delayed_legs_per_s": [round(r) for r in legs["delayed"]],
                "direct_per_s": round(statistics.fmean(legs["direct"]), 1),
                "delayed_per_s": round(statistics.fmean(legs["delayed"]), 1),
                "added_rtt_ms": config.rtt_ms}

    def _wait_running(self, fleet: DispatcherFleet, timeout: float = 90.0) -> None:
        """Until each of the fleet's dispatcher processes has written its heartbeat, and a
        second more for its LISTEN and its first claim and poll."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = list(fleet.processes())
            if len(pids) == len(DISPATCHER_HOSTS) and self.database.query(
                    "SELECT count(*) FROM dispatcher WHERE pid = ANY(%s) AND stopped_at IS NULL", [pids])[0][0] == len(pids):
                time.sleep(1.0)
                return
            time.sleep(0.1)
        raise RuntimeError(f"the drain's dispatchers were not all running after {timeout:.0f}s")

    def _enqueue_drain(self, leg: str, rows: int) -> None:
        for start in range(0, rows, 100):
            items = [{"channel": DRAIN_CHANNEL, "to": f"{leg}-{i}@example.com", "message": "drain",
                      "metadata": {"leg": leg}} for i in range(start, min(rows, start + 100))]
            status, body = _post_json(f"{self.lb_url}/api/v1/notifications/batch", {"notifications": items},
                                      self.api_key)
            if not 200 <= status < 300:
                raise RuntimeError(f"enqueueing the drain backlog: HTTP {status}: {body[:300]!r}")

    def _measure_throughput(self) -> dict[str, Any]:
        """Single POSTs from the load host: through lb (and the API hosts through PgBouncer),
        and straight to the API hosts' second gunicorn each, connected to db directly."""
        config = self.config
        direct_env = self._env(self._db_url("direct"))
        direct = [self._start(f"{name}-direct", self._gunicorn(name, API_DIRECT_PORT), direct_env) for name in API_HOSTS]
        for name, process in zip(API_HOSTS, direct):
            _wait_http(f"http://{self.network[name].address}:{API_DIRECT_PORT}/readyz", process, timeout=90)
        urls = {"via_lb": [self.lb_url],
                "direct": [f"http://{self.network[name].address}:{API_DIRECT_PORT}" for name in API_HOSTS]}
        legs: dict[str, list[float]] = {"via_lb": [], "direct": []}
        for _ in range(config.throughput_pairs):
            for way in ("via_lb", "direct"):
                argv = self.network["load"].argv(
                    sys.executable, "-m", "cluster.load_host", "throughput", *[a for u in urls[way] for a in ("--url", u)],
                    "--channel", DRAIN_CHANNEL, "--seconds", str(config.throughput_seconds))
                done = subprocess.run(argv, cwd=ROOT, env={**os.environ, "CLUSTER_API_KEY": self.api_key},
                                      capture_output=True, text=True, timeout=config.throughput_seconds + 60)
                if done.returncode != 0:
                    raise RuntimeError(f"throughput probe failed: {done.stderr[-2000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                legs[way].append(result["per_s"])
                self.log(f"  single POSTs {way}: {result['per_s']:,.0f}/s ({result['failed']} failed)")
        for process in direct:
            process.stop(timeout=15)
        return {"seconds_per_leg": config.throughput_seconds, "via_lb_legs_per_s": legs["via_lb"],
                "direct_legs_per_s": legs["direct"], "via_lb_per_s": round(statistics.fmean(legs["via_lb"]), 1),
                "direct_per_s": round(statistics.fmean(legs["direct"]), 1)}

    # --- helpers ----------------------------------------------------------------------------------

    def _lock(self):
        DATA.mkdir(parents=True, exist_ok=True)
        lock = open(DATA.parent / "cluster.lock", "w")
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lock
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise RuntimeError("another cluster run holds .data/cluster.lock (waited 900 s)") from None
                time.sleep(1)

    def _prepare_workdir(self) -> None:
        workdir = self.config.workdir
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        self.registry = ProcessRegistry(workdir / "pids.json")
        provider = f"http://{self.network['load'].address}:{PROVIDER_PORT}"
        (workdir / "channels.toml").write_text(
            f'[channels.{CHANNEL}]\nbackend = "chaos.provider_channel.ChaosProviderChannel"\n'
            f'options = {{ base_url = "{provider}", timeout = {self.config.send_timeout} }}\n\n'
            f'[channels.{DRAIN_CHANNEL}]\nbackend = "channels.backends.fake.FakeChannel"\n'
            'options = { latency_ms = 0 }\n')

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, env=env, cwd=ROOT, log_path=self.config.workdir / f"{name}.log",
                                 registry=self.registry)
        self.processes.append(process)
        process.start()
        return process

    def _process(self, name: str) -> ManagedProcess:
        return next(p for p in self.processes if p.name == name)

    def _manage(self, env: dict[str, str], *args: str) -> None:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")

    def _progress(self) -> None:
        try:
            outbox, sent = self.database.query(
                "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM notification WHERE status = 'sent')",
                retry_for=2)[0]
        except Exception:  # the database is being restarted: skip this line
            return
        self.log(f"sent {sent}, outbox {outbox}")

    def _wait_drained(self) -> tuple[bool, float]:
        """Until the outbox is empty and every notification is final (or drain_timeout)."""
        started = time.monotonic()
        deadline = started + self.config.drain_timeout
        while True:
            outbox, pending = self.database.query(
                "SELECT (SELECT count(*) FROM outbox), "
                "(SELECT count(*) FROM notification WHERE status NOT IN ('sent', 'failed', 'cancelled', 'expired'))")[0]
            if outbox == 0 and pending == 0:
                return True, time.monotonic() - started
            if time.monotonic() > deadline:
                return False, time.monotonic() - started
            time.sleep(0.2)

    def _clean_up(self, results: dict[str, Any], passed: bool) -> None:
        """Every process gone, the hosts removed; the database server's data removed after a
        pass (kept for inspection otherwise: start it with pg_ctl -D .data/cluster/pg)."""
        problems = []
        if self.database is not None:
            try:
                self.database.close(drop=False)
            except Exception as exc:
                problems.append(f"closing the runner's connection: {exc}")
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except Exception as exc:
                problems.append(f"stopping PostgreSQL: {exc}")
        try:
            net.teardown()
        except Exception as exc:
            problems.append(f"removing the hosts: {exc}")
        for process in self.processes:  # reap them (they died with their hosts)
            process.wait(1)
        if passed and self.postgres is not None:
            shutil.rmtree(self.postgres.data_dir, ignore_errors=True)
        if problems:
            results["cleanup_errors"] = problems


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)


def _fenced_outcomes(log: str) -> int:
    """Outcomes that a dispatcher's log says it could not record: their lease had been lost
    ("dispatcher D: N of M outcomes not recorded: ...", outbox/recorder.py), in LOG_FORMAT=json lines."""
    fenced = 0
    for line in log.splitlines():
        if "outcomes not recorded" not in line or not line.startswith("{"):
            continue
        try:
            fenced += int(json.loads(line)["message"].split(": ", 1)[1].split(" of ", 1)[0])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return fenced


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0


def _request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, bytes]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, parts.path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _get_json(url: str) -> Any:
    status, body = _request("GET", url)
    if status != 200:
        raise RuntimeError(f"{url} answered {status}")
    return json.loads(body)


def _post_json(url: str, payload: Any, api_key: str) -> tuple[int, bytes]:
    return _request("POST", url, json.dumps(payload).encode(),
                    {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})


def _wait_http(url: str, process: ManagedProcess, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited at start:\n{process.log()[-3000:]}")
        try:
            if _request("GET", url, timeout=2)[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{process.name} did not answer {url} within {timeout:.0f}s")
