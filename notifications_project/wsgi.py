"""WSGI entry point (gunicorn notifications_project.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifications_project.settings")

application = get_wsgi_application()

# Fail at start, naming the channel, rather than at the first request: a broken channels
# file (unknown backend, unset ${VAR}) stops the worker from booting.
from channels.registry import all_channels  # noqa: E402

all_channels()
