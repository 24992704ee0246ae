"""One chaos run, start to verdict.

1. Its own PostgreSQL server (chaos.database) and a fresh, migrated database; an API key.
2. The provider (chaos.provider), the API under gunicorn, and the dispatcher supervisors
   (chaos.fleet), as separate OS processes in their own process groups, configured through
   the environment and a channels file naming the chaos provider's channel.
3. The load driver (chaos.load) and the fault schedule (chaos.faults) at the same time.
4. Waiting (bounded) for the outbox to drain, stopping the dispatchers gracefully, reading
   what the provider received.
5. The checks (chaos.checks), printed as a table (chaos.report) and written as JSON.

Whatever happens, every process the run started is killed before it returns, the embedded
server is stopped if the run started it, and the run's database is dropped if the run passed
(kept for inspection otherwise, or with --keep-db).
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .checks import evaluate
from .database import RunDatabase
from .faults import FaultInjector, build_schedule
from .fleet import DispatcherFleet
from .isolation import HEALTHY, TARPIT, IsolationCheck
from .load import LoadDriver, plan_requests
from .processes import ManagedProcess, ProcessRegistry, kill_groups, kill_recorded_groups
from .provider import HOSTILE, FaultRates
from .report import table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / ".data" / "chaos" / "results.json"
DEFAULT_WORKDIR = ROOT / ".data" / "chaos" / "run"
DEFAULT_PGDATA = ROOT / ".data" / "chaos-pg"
CHANNEL = "chaos"


@dataclass
class Config:
    """Everything a run can vary (python -m chaos --help describes each)."""

    notifications: int = 10_000
    dispatchers: int = 4
    threads: int = 8
    batch_size: int = 50
    api_workers: int = 3
    clients: int = 8
    duration: float | None = None  # seconds over which the load is spread; None: by size
    kills: int = 4
    sigterms: int = 1
    sigstops: int = 1
    db_restarts: int = 1
    lease_seconds: float = 5.0
    send_timeout: float = 1.5
    # The isolation check's tarpit: a provider that never answers, each send held to this
    # deadline (as long as the lease allows: lease - 0.5 s at most). A short deadline would
    # overstate what abandoning sends costs the machine beside the healthy channel.
    tarpit_timeout: float = 4.0
    retry_base: float = 0.2
    retry_cap: float = 2.0
    max_attempts: int = 25
    pause: float = 2.0  # before a killed or stopped supervisor is started again
    stall_extra: float = 3.0  # a SIGSTOP lasts the lease plus this
    # How long a database restart keeps the server down (0: a fast restart, well under a
    # second, which barely shows anything). A few seconds: the API answers 503 for that long,
    # dispatchers back off and recorders retry, as in a failover.
    db_down_seconds: float = 3.0
    drain_timeout: float = 180.0
    # Notifications per measurement of the isolation check (chaos.isolation); 0 skips it.
    isolation_notifications: int = 1500
    rates: FaultRates = field(default_factory=FaultRates)
    latency_ms: tuple[float, float] = (2.0, 20.0)
    seed: int | None = None
    json_path: Path = DEFAULT_RESULTS
    workdir: Path = DEFAULT_WORKDIR
    pgdata: Path = DEFAULT_PGDATA
    database_url: str | None = None
    restart_cmd: str | None = None
    keep_db: bool = False
    lock_timeout: float = 600.0  # longest wait for another run that uses the same --pgdata

    def load_duration(self) -> float:
        # About 150 notifications a second: what this 2-core machine accepts and delivers
        # while the faults run, so that the queue does not simply pile up; at least 20 s, so
        # that the faults (a stall alone lasts lease + stall_extra) happen during the load.
        return self.duration if self.duration is not None else max(20.0, self.notifications / 150)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = self.load_duration()
        data["database_url"] = "set" if self.database_url else None
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


class Runner:
    """Runs one chaos run (see the module docstring); `run()` returns the results."""

    def __init__(self, config: Config, *, log: Callable[[str], None] | None = None):
        self.config = config
        self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self._t_start = time.monotonic()
        self._log = log or self._stderr
        self.stop = threading.Event()
        self.processes: list[ManagedProcess] = []
        self.fleet: DispatcherFleet | None = None
        self.registry: ProcessRegistry | None = None
        # Set by _start_processes:
        self.api: ManagedProcess | None = None
        self.provider: ManagedProcess | None = None
        self.api_base = self.provider_base = self.api_key = ""

    def log(self, text: str) -> None:
        self._log(f"[chaos {time.monotonic() - self._t_start:6.1f}s] {text}")

    @staticmethod
    def _stderr(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        results: dict[str, Any] = {"result": "error", "config": {**config.as_dict(), "seed": self.seed}}
        database = RunDatabase(pgdata=config.pgdata, external_url=config.database_url,
                               restart_cmd=config.restart_cmd, lock_timeout=config.lock_timeout)
        workdir_lock = None
        passed = False
        try:
            workdir_lock = self._prepare_workdir()
            self.registry = ProcessRegistry(config.workdir / "pids.json")
            self.log(f"preparing {database.describe()} (work directory {config.workdir})")
            database.open()
            if database.embedded:
                # For a cleanup after this runner died: the server to stop, if this run started it.
                self.registry.note(embedded_pgdata=str(database.pgdata), embedded_started=database.started_server)
            results["database"] = database.describe()
            results["workdir"] = str(config.workdir)
            results.update(self._run_with(database))
            passed = results["result"] == "pass"
        except KeyboardInterrupt:
            results["error"] = "interrupted"
            self.log("interrupted: cleaning up")
        except Exception as exc:
            results["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"run failed: {results['error']}")
        finally:
            self.stop.set()
            self._kill_everything()
            try:
                database.close(drop=passed and not config.keep_db)
            except Exception as exc:  # the verdict stands; the cleanup problem is reported
                results.setdefault("cleanup_errors", []).append(f"{type(exc).__name__}: {exc}")
            if not passed or config.keep_db:
                results["kept_database"] = database.url
            if workdir_lock is not None:
                workdir_lock.close()
            results.setdefault("timing", {})["total_seconds"] = round(time.monotonic() - self._t_start, 1)
        return results

    def _run_with(self, database: RunDatabase) -> dict[str, Any]:
        """The run proper, once its database exists: processes, load and faults, drain, verdict."""
        self._start_processes(database)
        driver, injector, t0 = self._load_and_faults(database)
        load_end, faults_end = driver.finished_at, time.monotonic()
        drained, drained_at = self._wait_drained(database)
        self.log(f"{'drained' if drained else 'NOT drained'} {drained_at - load_end:.1f}s after the last acknowledgement")
        # The isolation check, once the faults are over and the queue is empty: the same
        # dispatchers and provider, a healthy channel alone and beside one that hangs.
        self.fleet.wait_ready(timeout=60)
        isolation = IsolationCheck(
            api_base=self.api_base, api_key=self.api_key, database=database,
            notifications=self.config.isolation_notifications,
            tarpit_in_flight=self.config.dispatchers * self.config.threads // 2,
            send_timeout=self.config.tarpit_timeout, log=self.log,
        ).run() if self.config.isolation_notifications else None
        drained = self._wait_drained(database)[0] and drained
        # A supervisor that the last fault started again may still be starting: a SIGTERM
        # before it has installed its handler would kill it outright (the OS default).
        self.fleet.wait_ready(timeout=60)
        final_codes = self.fleet.stop_all(timeout=self.config.lease_seconds + 15)
        provider_requests = _get_json(f"{self.provider_base}/requests")["requests"]  # every send has ended
        self.api.stop(timeout=20)
        self.provider.stop(timeout=10)
        results = self._verdict(database, driver, injector, provider_requests, final_codes, isolation)
        results["result"] = "pass" if drained and all(v == 0 for v in results["checks"].values()) else "fail"
        results["timing"] = {
            "load_seconds": round(load_end - t0, 1),
            "faults_seconds": round(faults_end - t0, 1),
            "drain_seconds": round(drained_at - load_end, 1),
            "drain_after_faults_seconds": round(max(0.0, drained_at - faults_end), 1),
            "drained": drained,
        }
        return results

    def _start_processes(self, database: RunDatabase) -> None:
        """Migrate, create the API key, start the provider, the API and the dispatchers."""
        config = self.config
        api_port, provider_port = _free_port(), _free_port()
        self.api_base, self.provider_base = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{provider_port}"
        channels_file = config.workdir / "channels.toml"
        # The load's channel, and the isolation check's two (chaos.isolation): the provider's
        # clean path and its tarpit.
        channels_file.write_text("".join(
            f'[channels.{name}]\nbackend = "chaos.provider_channel.ChaosProviderChannel"\n'
            f'options = {{ base_url = "{self.provider_base}{path}", timeout = {self._deadline(name)} }}\n'
            for name, path in ((CHANNEL, ""), (HEALTHY, "/clean"), (TARPIT, "/tarpit"))
        ))
        env = self._child_env(database, channels_file)

        self.log("migrating the run's database")
        self._manage(env, "migrate", "--noinput", "-v", "0")
        self.api_key = "ntf_" + secrets.token_urlsafe(24)
        self._manage(env, "create_api_key", "chaos", "--key", self.api_key, "--quiet")

        self.provider = self._start("provider", [
            sys.executable, "-m", "chaos.provider", "--port", str(provider_port),
            *[arg for name, rate in asdict(config.rates).items() for arg in (f"--{name.replace('_', '-')}", str(rate))],
            "--latency-ms", *map(str, config.latency_ms), "--slow-seconds", str(config.send_timeout + 1.5),
            "--retry-after", "1", "--seed", str(self.seed),
        ], env)
        # The deployment's gunicorn configuration, where there is one; the command line overrides it.
        gunicorn_conf = ROOT / "notifications_project" / "gunicorn.conf.py"
        self.api = self._start("api", [
            sys.executable, "-m", "gunicorn", *(["-c", str(gunicorn_conf)] if gunicorn_conf.exists() else []),
            "notifications_project.wsgi", "--bind", f"127.0.0.1:{api_port}",
            "--workers", str(config.api_workers), "--timeout", "60", "--graceful-timeout", "10",
            "--access-logfile", "-", "--error-logfile", "-",
        ], env)
        self.fleet = DispatcherFleet(
            config.dispatchers, env=env, cwd=ROOT, workdir=config.workdir, registry=self.registry,
            args=["--threads", str(config.threads), "--batch-size", str(config.batch_size),
                  "--lease-seconds", str(config.lease_seconds)],
        )
        self.fleet.start()
        _wait_http(f"{self.provider_base}/health", self.provider, timeout=30)
        _wait_http(f"{self.api_base}/healthz", self.api, timeout=60)
        self.fleet.wait_ready(timeout=60)
        self.log(f"running: API {self.api_base} ({config.api_workers} workers), provider {self.provider_base}, "
                 f"{config.dispatchers} dispatcher supervisors; seed {self.seed}")

    def _load_and_faults(self, database: RunDatabase) -> tuple[LoadDriver, FaultInjector, float]:
        """Submit the load while the fault schedule runs; returns when both are done."""
        config = self.config
        duration = config.load_duration()
        plan = plan_requests(config.notifications, rng=self.rng, channel=CHANNEL)
        driver = LoadDriver(base_url=self.api_base, api_key=self.api_key, plan=plan, duration=duration,
                            clients=config.clients, seed=self.seed)
        injector = FaultInjector(fleet=self.fleet, database=database, api_base=self.api_base, api_key=self.api_key,
                                 lease_seconds=config.lease_seconds, pause=config.pause,
                                 stall_extra=config.stall_extra, db_down_seconds=config.db_down_seconds,
                                 rng=self.rng, log=self.log)
        schedule = build_schedule(duration=duration, kills=config.kills, sigterms=config.sigterms,
                                  sigstops=config.sigstops, db_restarts=config.db_restarts, rng=self.rng)
        self.log(f"load: {config.notifications} notifications in {len(plan)} requests over {duration:.0f}s; "
                 f"faults: {', '.join(f'{kind}@{at:.0f}s' for at, kind in schedule)}")
        t0 = time.monotonic()
        load_thread = threading.Thread(target=driver.run, args=(self.stop,), name="load", daemon=True)
        fault_thread = threading.Thread(target=injector.run, args=(schedule,), kwargs={"t0": t0, "stop": self.stop},
                                        name="faults", daemon=True)
        load_thread.start()
        fault_thread.start()
        deadline = t0 + duration + 300  # bounded: requests give up after 120 s, faults are finite
        next_progress = time.monotonic() + 5
        while (load_thread.is_alive() or fault_thread.is_alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
            if time.monotonic() >= next_progress:
                self._progress(database, driver)
                next_progress += 5
        if load_thread.is_alive() or fault_thread.is_alive():
            raise RuntimeError("the load or the fault schedule did not finish in time")
        acked = sum(len(o.ids) for o in driver.outcomes)
        self.log(f"load done in {driver.finished_at - t0:.1f}s: {acked} notifications acknowledged")
        return driver, injector, t0

    def _verdict(self, database: RunDatabase, driver: LoadDriver, injector: FaultInjector,
                 provider_requests: list[list[Any]], final_codes: dict[str, int | None],
                 isolation: dict[str, Any] | None) -> dict[str, Any]:
        """The checks (chaos.checks, plus the API's and the dispatchers' behaviour) and figures."""
        config = self.config
        stalled = [event["pid"] for event in injector.events if event["kind"] == "sigstop"]
        sends = self.fleet.sends()
        evaluation = evaluate(database, driver.outcomes, provider_requests, channel=CHANNEL,
                              max_attempts=config.max_attempts, stalled_pids=stalled,
                              send_ends={(s["pid"], s["id"], s["attempt"]): s["ended_at"] for s in sends})
        # Every send must have returned by its channel's deadline, give or take a second; but
        # for a process the run stopped (SIGSTOP): its stall is the fault injected.
        overruns = [(s["seconds"] - self._deadline(s["channel"]), s["channel"]) for s in sends if s["pid"] not in stalled]
        longest_overrun = max(overruns, default=(0.0, "-"))
        past_deadline = sum(1 for overrun, _ in overruns if overrun > 1)
        hostile_seen = {row[3] for row in provider_requests}
        hostile_missing = [fault for fault in HOSTILE if getattr(config.rates, f"rate_{fault}") > 0
                           and fault not in hostile_seen]
        dispatchers = {**self.fleet.log_summary(), "final_exit_codes": final_codes}
        worker_boots = self.api.log().count("Booting worker")
        probes = [outage["api_probe"] for outage in injector.db_outages]
        probe_unexpected = sum(n for probe in probes for status, n in probe["answers"].items() if status not in ("200", "503"))
        probe_without_retry_after = sum(probe["answers_503_without_retry_after"] for probe in probes)
        unexpected_exits = (
            # every replacement beyond the processes the run killed, and every crash
            max(0, dispatchers.get("processes_replaced", 0) - injector.counts["sigkill_process"])
            + dispatchers.get("processes_crashed", 0)
            # a graceful stop exits 0
            + sum(1 for code in final_codes.values() if code != 0)
            + sum(1 for code in injector.sigterm_exit_codes if code != 0)
        )
        checks = {
            **evaluation.pop("checks"),
            # While the database is down: 503 with Retry-After, nothing else, answered promptly.
            "api_unexpected_answers": driver.stats.count_unexpected() + probe_unexpected + probe_without_retry_after,
            "api_hangs": driver.stats.answers.get("timeout", 0),
            "api_not_recovered": sum(1 for probe in probes if probe["recovered_after_s"] is None),
            "api_worker_restarts": max(0, worker_boots - config.api_workers),
            "dispatcher_unexpected_exits": unexpected_exits,
            # A dispatcher that retries with backoff logs a few errors per outage; hundreds
            # would mean a tight loop (an outage lasts seconds).
            "dispatcher_spinning": int(dispatchers["db_error_lines_max_per_process"] > 25 * max(1, config.db_restarts)),
            "faults_not_injected": len(injector.errors) + len(hostile_missing),
            "sends_past_their_deadline": past_deadline,
            "healthy_channel_slowed_by_a_hostile_one": int(isolation is not None and isolation["ratio"] < 0.9),
        }
        provider_counts: dict[str, int] = {}
        for row in provider_requests:
            provider_counts[row[3]] = provider_counts.get(row[3], 0) + 1
        return {
            "checks": checks,
            **evaluation,
            "faults": {
                **injector.counts,
                "sigterm_exit_codes": injector.sigterm_exit_codes,
                "db_outages": injector.db_outages,
                "provider": dict(sorted(provider_counts.items())),
                "errors": injector.errors + [f"hostile answer {fault} never drawn" for fault in hostile_missing],
                "events": injector.events,
            },
            "api": {
                "requests": len(driver.plan),
                **driver.stats.as_dict(),
                "replayed": sum(o.replayed for o in driver.outcomes),
                "unacknowledged_requests": sum(not o.acknowledged for o in driver.outcomes),
                "unacknowledged_samples": [o.error for o in driver.outcomes if not o.acknowledged][:10],
                "worker_restarts": checks["api_worker_restarts"],
            },
            "dispatchers": dispatchers,
            "sends": {
                "count": len(overruns),
                "deadlines_s": {name: self._deadline(name) for name in (CHANNEL, HEALTHY, TARPIT)},
                "longest_past_deadline_s": round(longest_overrun[0], 3),
                "longest_past_deadline_channel": longest_overrun[1],
                "past_deadline_plus_1s": past_deadline,
            },
            "isolation": isolation,
        }

    # --- helpers --------------------------------------------------------------------------------

    def _deadline(self, channel: str) -> float:
        """The send deadline (`timeout`) of one of the run's channels."""
        return self.config.tarpit_timeout if channel == TARPIT else self.config.send_timeout

    def _prepare_workdir(self) -> Any:
        """A clean work directory, locked for this run; leftovers of a dead runner are killed."""
        workdir = self.config.workdir.resolve()
        workdir.parent.mkdir(parents=True, exist_ok=True)
        lock = open(workdir.with_name(workdir.name + ".lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"another chaos run uses {workdir}; give this one another --workdir") from None
        if workdir.exists():
            if kill_recorded_groups(workdir / "pids.json"):
                self.log("killed processes left over by an earlier run")
            if not (workdir / ".chaos-workdir").exists() and any(workdir.iterdir()):
                lock.close()
                raise RuntimeError(f"{workdir} is not a chaos work directory; not deleting it")
            shutil.rmtree(workdir)
        workdir.mkdir()
        (workdir / ".chaos-workdir").touch()
        self.config.workdir = workdir
        return lock

    def _child_env(self, database: RunDatabase, channels_file: Path) -> dict[str, str]:
        config = self.config
        return {
            **os.environ,
            "DATABASE_URL": database.url,
            "NOTIFY_EMBEDDED_PGDATA": str(config.pgdata.resolve()),
            "NOTIFY_CHANNELS_FILE": str(channels_file),
            "DJANGO_ENV": "development",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "NOTIFY_THROTTLE_RATE": "1000000/minute",
            "OUTBOX_LEASE_SECONDS": str(config.lease_seconds),
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.5",
            "OUTBOX_RETRY_BASE_SECONDS": str(config.retry_base),
            "OUTBOX_RETRY_CAP_SECONDS": str(config.retry_cap),
            "OUTBOX_MAX_ATTEMPTS": str(config.max_attempts),
            "DATABASE_CONNECT_TIMEOUT": "5",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",  # one record per line: chaos.fleet reads the dispatchers' logs
            "PYTHONUNBUFFERED": "1",
        }

    def _manage(self, env: dict[str, str], *args: str) -> None:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, env=env, cwd=ROOT, log_path=self.config.workdir / f"{name}.log",
                                 registry=self.registry)
        self.processes.append(process)
        process.start()
        return process

    def _progress(self, database: RunDatabase, driver: LoadDriver) -> None:
        acked = sum(len(o.ids) for o in driver.outcomes)
        try:
            outbox, sent = database.query(
                "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM notification WHERE status = 'sent')",
                retry_for=2)[0]
        except Exception:  # the database is being restarted: skip this line
            return
        self.log(f"acknowledged {acked}, sent {sent}, outbox {outbox}")

    def _wait_drained(self, database: RunDatabase) -> tuple[bool, float]:
        """Until the outbox is empty and every notification is final (or drain_timeout)."""
        deadline = time.monotonic() + self.config.drain_timeout
        last_log = 0.0
        while True:
            outbox, pending = database.query(
                "SELECT (SELECT count(*) FROM outbox), "
                "(SELECT count(*) FROM notification WHERE status NOT IN ('sent', 'failed', 'cancelled', 'expired'))")[0]
            now = time.monotonic()
            if outbox == 0 and pending == 0:
                return True, now
            if now > deadline:
                return False, now
            if now - last_log > 5:
                self.log(f"draining: outbox {outbox}, not final {pending}")
                last_log = now
            time.sleep(0.2)

    def _kill_everything(self) -> None:
        """SIGKILL every process group this run started (also on success: nothing must outlive it)."""
        if self.fleet is not None:
            self.fleet.kill_all()
        for process in self.processes:
            process.kill_group()
        if self.registry is not None:
            kill_groups(self.registry.groups())


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: ManagedProcess, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited at start:\n{process.log()[-3000:]}")
        try:
            _get_json(url, timeout=2)
            return
        except (OSError, http.client.HTTPException, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"{process.name} did not answer {url} within {timeout:.0f}s")


def _get_json(url: str, *, timeout: float = 30) -> Any:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise ValueError(f"{url} answered {response.status}")
        return json.loads(data)
    finally:
        connection.close()


def print_table(results: dict[str, Any]) -> None:
    print(table(results), flush=True)
