"""Endpoints for load balancers, orchestrators and Prometheus: plain Django views, outside the
API (no API key, no throttling), answered the same by every API process.

    /healthz   the process is up; never touches the database (a liveness probe must not
               restart every API process because the database is down)
    /readyz    the database answers and every migration is applied (a readiness probe)
    /metrics   Prometheus text format: the counters of every process that shares this host's
               PROMETHEUS_MULTIPROC_DIR (gunicorn workers, and dispatchers under `make run`),
               plus the outbox gauges, queried at scrape time
"""

from __future__ import annotations

import logging

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from notifications.api_errors import DATABASE_RETRY_AFTER, error_response
from outbox import metrics as outbox_metrics

logger = logging.getLogger("notifications_project.health")


@never_cache
@require_safe
def healthz(request):
    """The process is up (it answers without touching the database)."""
    return JsonResponse({"status": "ok"})


def unapplied_migrations(connection) -> list[str]:
    """app.name of each migration not applied to `connection`'s database (its plan to the
    latest state of every app)."""
    executor = MigrationExecutor(connection)
    targets = executor.loader.graph.leaf_nodes()
    return [f"{migration.app_label}.{migration.name}" for migration, _ in executor.migration_plan(targets)]


def _not_ready(message: str) -> JsonResponse:
    response = error_response("not_ready", message, 503)
    response["Retry-After"] = str(DATABASE_RETRY_AFTER)
    return response


@never_cache
@require_safe
def readyz(request):
    """200 when the database answers and no migration is unapplied; 503 otherwise."""
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        pending = unapplied_migrations(connection)
    except Exception as exc:  # any failure to answer means "not ready", never a 500
        logger.warning("readyz: database unavailable (%s)", exc)
        return _not_ready("The database is unavailable.")
    if pending:
        shown = ", ".join(pending[:10]) + (" ..." if len(pending) > 10 else "")
        return _not_ready(f"{len(pending)} migration(s) not applied: {shown}")
    return JsonResponse({"status": "ok"})


class _Collectors:
    """The collectors of one scrape, as one (prometheus_client only calls .collect())."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


@never_cache
@require_safe
def metrics(request):
    """Prometheus exposition (text format, or OpenMetrics when the scraper asks for it)."""
    from prometheus_client import REGISTRY
    from prometheus_client.exposition import choose_encoder

    # With a multiprocess directory, the values of every process that writes there; without
    # one (tests, `manage.py runserver`), this process's own registry.
    processes = outbox_metrics.multiprocess_registry() if outbox_metrics.multiprocess_dir() else REGISTRY
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(_Collectors(processes, outbox_metrics.OutboxCollector()))
    return HttpResponse(body, content_type=content_type)


class ProbesMiddleware:
    """Answer /healthz, /readyz and /metrics before Django's host check.

    Load balancers, orchestrators and Prometheus reach each API process by its address, which
    is not in ALLOWED_HOSTS (nor should it be); the probes serve no content a forged Host
    header could poison. First in MIDDLEWARE.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.probes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}

    def __call__(self, request):
        probe = self.probes.get(request.path)
        return probe(request) if probe is not None else self.get_response(request)
