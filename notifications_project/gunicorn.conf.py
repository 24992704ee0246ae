"""gunicorn settings of the API: `gunicorn -c notifications_project/gunicorn.conf.py
notifications_project.wsgi` (make run and the container image use it; --bind, --workers and
the rest stay on the command line, which overrides anything here).

- Prometheus multiprocess mode: the workers write their metrics to PROMETHEUS_MULTIPROC_DIR,
  and /metrics, answered by any one worker, adds up all of them. Without the variable, a
  private directory is made for this server (removed when it exits); `make run` sets it to
  .data/prometheus, shared with its dispatchers. A worker that exits is marked dead there.
- Logs: gunicorn's own loggers (error and access) get the same secrets filter as the
  application's, and JSON lines with LOG_FORMAT=json. The access log's format has no request
  headers, so no Authorization value reaches it.
"""

import os
import shutil
import sys
import tempfile

# gunicorn loads this file by path; make the project importable for the filter and formatter.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_private_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _private_metrics_dir = tempfile.mkdtemp(prefix="api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _private_metrics_dir
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# Threaded workers keep a client's connection open between its requests (HTTP keep-alive):
# a sync worker closes each connection after one answer, so that every request paid a TCP
# connect, accept and close on both sides, more CPU than Django spent on it. A worker's
# threads also overlap their waits for the database. Each thread has its own database
# connection (workers x threads in all).
worker_class = "gthread"
threads = 4
keepalive = 5

accesslog = "-"
# gunicorn's default access format: remote address, time, request line, status, size,
# referer, user agent. No header values (Authorization never appears).
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

_json = (os.environ.get("LOG_FORMAT") or "plain").strip().lower() == "json"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
        "json": {"()": "notifications_project.logging.JsonFormatter"},
    },
    "filters": {"redact_secrets": {"()": "notifications_project.logging.RedactSecretsFilter"}},
    "handlers": {
        "gunicorn_console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if _json else "line",
            "filters": ["redact_secrets"],
            "stream": "ext://sys.stderr",
        },
        "gunicorn_access": {
            # a line per request, written in batches (at most 0.5 s late): one write per batch
            "class": "notifications_project.logging.BatchedStreamHandler",
            # the plain access line as gunicorn formats it, or JSON with it as the message
            "formatter": "json" if _json else None,
            "filters": ["redact_secrets"],
            "stream": "ext://sys.stdout",
        },
    },
    "root": {"level": "INFO", "handlers": ["gunicorn_console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["gunicorn_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["gunicorn_access"], "propagate": False},
    },
}


def child_exit(server, worker):
    """A worker exited: its live gauges leave the metrics (its counters are kept)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _private_metrics_dir:
        shutil.rmtree(_private_metrics_dir, ignore_errors=True)
