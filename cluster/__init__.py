"""Cluster run: the scale-out across hosts, proven on one machine with network namespaces.

`python -m cluster` (or `make cluster`) creates its own test hosts (network namespaces on a
private bridge: db, pool, lb, api1, api2, disp1..3, load), runs the project's real processes
on them (PostgreSQL, PgBouncer, HAProxy, gunicorn, run_dispatchers, the chaos suite's load
driver and provider), submits notifications through the load balancer while faults of the
network kind happen (added latency, a dispatcher host cut off from the database past its
lease, an API host cut off, a dispatcher host lost, PostgreSQL and PgBouncer restarted),
checks that nothing acknowledged was lost, measures what the network costs, and removes
everything it created. It needs root and `ip netns`; PgBouncer and HAProxy are installed
from Debian's packages when missing.

Modules, one job each:
- network:     the hosts (namespaces, bridge, addresses) and the network faults
- delay_proxy: a TCP proxy adding latency in each direction (the kernel here has no netem)
- services:    PostgreSQL, PgBouncer and HAProxy on their hosts
- load_host:   what runs on the load host: the load driver, a throughput probe
- faults:      the fault schedule and its injection
- runner:      the orchestration of one run, its checks and measurements
- report:      the results table
"""
