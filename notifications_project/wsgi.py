"""WSGI entry point (gunicorn notifications_project.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

from notifications_project import embedded_postgres

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifications_project.settings")

# The embedded PostgreSQL (DATABASE_URL unset) runs before the first request; settings only
# say where it listens.
embedded_postgres.ensure_running_if_used()

application = get_wsgi_application()

# Fail at start, naming the channel, rather than at the first request: a broken channels
# file (unknown backend, unset ${VAR}) stops the worker from booting.
from channels.registry import all_channels  # noqa: E402

all_channels()
