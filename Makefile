# The two commands a fresh machine needs: `make run` and `make test`.
# Each creates .venv and installs the pinned requirements on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test test-fast check venv clean-db

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(INSTALLED)

venv: $(INSTALLED)

## make run: the service (API on $PORT, default 8000, and dispatchers) until Ctrl-C
run: $(INSTALLED)
	$(PY) bin/run_local.py

## make test: the whole test suite, against the embedded PostgreSQL (or DATABASE_URL)
test: $(INSTALLED)
	$(PY) -m pytest

## make test-fast: the suite without the tests marked slow or chaos (see tests/README.md)
test-fast: $(INSTALLED)
	$(PY) -m pytest -m "not slow and not chaos"

## make check: Django's system checks (channels configuration included)
check: $(INSTALLED)
	$(PY) manage.py check

## make clean-db: stop the embedded PostgreSQL and delete its data
clean-db: $(INSTALLED)
	$(PY) -m notifications_project.embedded_postgres stop
	rm -rf .data/pg

# --- Benchmarks: bench/ against its own embedded PostgreSQL (or DATABASE_URL) -------------------
BENCH_INSTALLED := $(VENV)/.bench-installed

.PHONY: bench bench-quick

# procrastinate (the peer queue), psutil and py-spy into the venv; wrk from Debian's packages
# when we are root (without it the harness uses its Python load generator and says so).
$(BENCH_INSTALLED): $(INSTALLED) requirements-bench.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || apt-get install -y -qq wrk >/dev/null 2>&1 \
		|| (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1) \
		|| echo "wrk could not be installed: ingest_single_* will come from the Python load generator"
	touch $(BENCH_INSTALLED)

## make bench: every benchmark figure, as ratios to references of the same run (about 13 minutes here);
## prints the table and writes bench/results.json
bench: $(BENCH_INSTALLED)
	$(PY) -m bench

## make bench-quick: the same at smaller sizes (about 2 to 3 minutes)
bench-quick: $(BENCH_INSTALLED)
	$(PY) -m bench --quick

# --- Chaos: at-least-once under faults, against its own embedded PostgreSQL ---------------------
.PHONY: chaos

## make chaos: 10,000 notifications through the API while dispatchers are killed, stopped past
## their lease and terminated, PostgreSQL restarts and the provider misbehaves; checks that
## nothing acknowledged is lost; prints the table and writes .data/chaos/results.json
## (CHAOS_ARGS="--notifications 2000" and the like: `python -m chaos --help`)
chaos: $(INSTALLED)
	$(PY) -m chaos $(CHAOS_ARGS)

# --- Cluster: the scale-out across hosts, in network namespaces (root and `ip netns` needed) -----
.PHONY: cluster

## make cluster: 10,000 notifications through HAProxy onto 2 API hosts (via PgBouncer) and 3
## dispatcher hosts (+20 ms to PostgreSQL), each a network namespace, while hosts are cut off,
## killed and restarted; checks that nothing acknowledged is lost, measures the network's cost;
## prints the table and writes .data/cluster/results.json (CLUSTER_ARGS: `python -m cluster --help`)
cluster: $(INSTALLED)
	$(PY) -m cluster $(CLUSTER_ARGS)
