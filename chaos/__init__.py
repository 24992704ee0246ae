"""Chaos suite: proves at-least-once delivery under faults, with real processes.

`python -m chaos` (or `make chaos`) runs the API under gunicorn, several `run_dispatchers`
supervisors and a misbehaving HTTP provider against a fresh database on the real PostgreSQL,
submits notifications through the HTTP API while killing, stopping and terminating
dispatchers and restarting the database, waits for the queue to drain, then checks that
nothing acknowledged was lost and reports duplicates, attempts and timings.

Modules, one job each:
- provider:         the fake provider (HTTP server recording deliveries, injecting faults)
- provider_channel: the channel backend that dispatchers use to reach it
- processes:        starting, signalling and cleaning up the run's OS processes
- fleet:            the dispatcher supervisors and what their logs say
- database:         the run's own PostgreSQL server and database, and its restart
- load:             the load driver (a careful API client)
- faults:           the fault schedule and its injection
- checks:           the verdict: invariants and figures from the database and the provider
- report:           the results table
- runner:           the orchestration of one run
"""
