"""The benchmark harness: `python -m bench [--quick] [--json bench/results.json]`.

It starts the service's real processes (gunicorn, `manage.py run_dispatchers`) against a
fresh database on its own embedded PostgreSQL (or on DATABASE_URL's server), measures intake,
delivery, wake-up latency and memory, and gives each figure next to a reference measured in
the same run on the same server: pgbench replaying ../shared/bench-reference (the database's
own limit) and the `procrastinate` task queue (a peer). This machine is shared and small, so
absolute figures move from run to run; the ratios are what compare.

Modules, one job each:
- config: the run sizes (full, --quick, --smoke) and paths;
- database: the PostgreSQL server and the run's databases, pg_stat counters;
- servers: gunicorn and run_dispatchers as real OS processes, and their memory;
- pgbench: the reference runs of ../shared/bench-reference;
- ingest: single POSTs under wrk (or the Python load generator of loadgen), batch POSTs;
- dispatch: bulk enqueue, timed drains, commits per notification;
- latency, latency_channel: commit-to-send latency through LISTEN/NOTIFY;
- procrastinate_ref: the peer queue draining the same number of no-op jobs;
- report: ratios, goals, the table and results.json.
"""
