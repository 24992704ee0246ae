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

## make check: Django's system checks (channels configuration included)
check: $(INSTALLED)
	$(PY) manage.py check

## make clean-db: stop the embedded PostgreSQL and delete its data
clean-db: $(INSTALLED)
	$(PY) -m notifications_project.embedded_postgres stop
	rm -rf .data/pg
