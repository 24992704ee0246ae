"""Django settings for the notification service.

Everything that differs between machines comes from the environment (see .env.example).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


# DJANGO_ENV=production turns on the checks and protections of a deployment: it refuses to
# start without DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS, and `manage.py check --deploy`
# passes with the environment documented in .env.example.
PRODUCTION = os.environ.get("DJANGO_ENV", "development") == "production"
DEBUG = env_bool("DJANGO_DEBUG", False)  # never on unless asked for, and never in production

if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("DJANGO_DEBUG must be off when DJANGO_ENV=production")
    SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
    if len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("DJANGO_ENV=production needs DJANGO_SECRET_KEY (50+ random characters)")
    ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()]
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("DJANGO_ENV=production needs DJANGO_ALLOWED_HOSTS (comma-separated host names)")
    # TLS ends at the load balancer, which sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]  # probes speak plain HTTP
    SECURE_HSTS_SECONDS = int(env_float("DJANGO_SECURE_HSTS_SECONDS", 31_536_000))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
else:
    SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "insecure-development-key-only-for-local-runs-and-tests"
    ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels.apps.ChannelsConfig",
    "notifications.apps.NotificationsConfig",
    "outbox.apps.OutboxConfig",
    "django_q",  # scheduled housekeeping (notifications/housekeeping.py), ORM broker
]

MIDDLEWARE = [
    "notifications_project.views.ProbesMiddleware",  # probes answer whatever the Host header
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "notifications.middleware.RequestBodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "notifications_project.urls"
WSGI_APPLICATION = "notifications_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# PostgreSQL only: the outbox relies on FOR UPDATE SKIP LOCKED and LISTEN/NOTIFY.
# Connections are persistent (CONN_MAX_AGE below) and are not checked before each request
# (CONN_HEALTH_CHECKS below): one broken by a database restart is closed at the end of the
# request that met it, and the process reconnects without a restart. connect_timeout bounds
# a request's wait while the database is unreachable.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    import dj_database_url

    _db = dj_database_url.parse(DATABASE_URL)
    if _db["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...)")
else:
    # The embedded server: settings only say where it listens, which is known before it runs.
    # The entry points that connect start it (embedded_postgres.ensure_running_if_used():
    # manage.py, wsgi.py, tests/conftest.py, bin/run_local.py).
    from notifications_project import embedded_postgres

    _server = embedded_postgres.address()
    _db = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": embedded_postgres.DATABASE_NAME,
        "USER": embedded_postgres.USER,
        "HOST": _server.socket_dir,
        "PORT": str(_server.port),
    }
_db.setdefault("OPTIONS", {})
_db["OPTIONS"].setdefault("connect_timeout", int(env_float("DATABASE_CONNECT_TIMEOUT", 5)))
# Server-side parameters and prepared statements: psycopg prepares a statement once a
# connection has run it 5 times, so the delivery path's large statements (outbox/sql.py) are
# parsed and planned once per connection. Behind a transaction-mode pooler (which cannot keep
# prepared statements) set DATABASE_PREPARE_THRESHOLD=off.
_db["OPTIONS"].setdefault("server_side_binding", True)
_prepare = os.environ.get("DATABASE_PREPARE_THRESHOLD", "5").strip().lower()
_db["OPTIONS"].setdefault("prepare_threshold", None if _prepare in {"off", "none", ""} else int(_prepare))
_db["CONN_MAX_AGE"] = None
# No health check (a `SELECT 1` round trip) before each request's first query: after a
# database restart, a worker's first request answers 503 and its broken connection is
# dropped at the request's end, so the next request reconnects. Set 1 to trade that one
# 503 per worker for a round trip on every request.
_db["CONN_HEALTH_CHECKS"] = env_bool("DATABASE_CONN_HEALTH_CHECKS", False)
_db["TEST"] = {"NAME": os.environ.get("DATABASE_TEST_NAME") or f"test_{_db['NAME']}"}
DATABASES = {"default": _db}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Internationalisation, static files ------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# collectstatic's target (the container image sets it); without it, files come from the apps.
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve the admin's static files from the installed apps, so no collectstatic step is needed
# for a local run; production images run collectstatic.
WHITENOISE_USE_FINDERS = True

# --- API -------------------------------------------------------------------------------------
_THROTTLE_RATE = (os.environ.get("NOTIFY_THROTTLE_RATE") or "100000/minute").strip()
REST_FRAMEWORK = {
    "DEFAULT_PARSER_CLASSES": ["notifications.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["notifications.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["notifications.throttling.ApiClientRateThrottle"],
    # Per client, for the whole fleet (notifications.throttling); "off": no limit.
    "DEFAULT_THROTTLE_RATES": {"api_client": None if _THROTTLE_RATE.lower() in ("off", "none") else _THROTTLE_RATE},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "notifications.api_errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Notification service API",
    "DESCRIPTION": (
        "Send notifications over email, SMS, Slack, webhooks and more, delivered at least once. "
        "Authenticate with `Authorization: Bearer <API key>`. Every error answer has the shape "
        '`{"error": {"code", "message", "fields"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",  # served from our static files: no CDN
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["notifications.openapi.without_slash_variants"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "notifications.openapi.describe_channels",
    ],
}
# At most this many counter rows per client for the rate limit (notifications.throttling: one
# per 1,000 of the limit): one is exact; more let one client's concurrent POSTs commit side by
# side, and may let through the requests in flight on the other rows when the limit is reached.
NOTIFY_THROTTLE_SHARDS = int(env_float("NOTIFY_THROTTLE_SHARDS", 8))
# A revoked API key stops working in other API processes within this many seconds.
NOTIFY_API_KEY_CACHE_SECONDS = env_float("NOTIFY_API_KEY_CACHE_SECONDS", 10)
# How long an Idempotency-Key is remembered.
NOTIFY_IDEMPOTENCY_TTL_SECONDS = env_float("NOTIFY_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)
# How far ahead send_at may be.
NOTIFY_MAX_SCHEDULE_DAYS = env_float("NOTIFY_MAX_SCHEDULE_DAYS", 30)
# Requests to the API larger than this answer 413.
NOTIFY_MAX_REQUEST_BYTES = int(env_float("NOTIFY_MAX_REQUEST_BYTES", 256 * 1024))
NOTIFY_MAX_BATCH_REQUEST_BYTES = int(env_float("NOTIFY_MAX_BATCH_REQUEST_BYTES", 16 * 1024 * 1024))

# --- Channels -------------------------------------------------------------------------------
# name -> {"BACKEND": dotted path, "OPTIONS": {...}}, shaped like DATABASES and CACHES.
# Read from a TOML file so that operators change channels without touching code.
NOTIFY_CHANNELS_FILE = os.environ.get("NOTIFY_CHANNELS_FILE") or str(BASE_DIR / "channels.toml")

from channels.config import load_channels_file  # noqa: E402

NOTIFICATION_CHANNELS = load_channels_file(NOTIFY_CHANNELS_FILE)

# --- After the send: receipts from providers, status webhooks to the clients -----------------
# Webhook endpoints (POST /api/v1/webhook-endpoints) on loopback or private addresses are
# refused unless this is true (development and tests; off in production).
NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS = env_bool("NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS", False)
# ESP tracking webhooks (/receipts/anymail/<esp>/tracking/) take HTTP basic auth "user:password",
# Anymail's WEBHOOK_SECRET; without it they answer 403 (anyone could forge a bounce).
ANYMAIL = {"WEBHOOK_SECRET": os.environ.get("NOTIFY_ANYMAIL_WEBHOOK_SECRET", "")}

# --- Delivery (outbox and dispatchers) --------------------------------------------------------
OUTBOX = {
    # How long a dispatcher owns the rows it claimed; a dead dispatcher's rows are claimable
    # again after this. Keep it well above every channel's send timeout.
    "LEASE_SECONDS": env_float("OUTBOX_LEASE_SECONDS", 60),
    # Fallback wake-up for scheduled retries and expired leases (new work wakes by NOTIFY).
    "POLL_INTERVAL_SECONDS": env_float("OUTBOX_POLL_INTERVAL_SECONDS", 1.0),
    # Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**(n-1))).
    "RETRY_BASE_SECONDS": env_float("OUTBOX_RETRY_BASE_SECONDS", 5),
    "RETRY_CAP_SECONDS": env_float("OUTBOX_RETRY_CAP_SECONDS", 3600),
    "MAX_ATTEMPTS": int(env_float("OUTBOX_MAX_ATTEMPTS", 10)),
    # A notification whose channel has fallbacks (channels.policy) moves to the next one after
    # this many transient failures on its channel (and at once while its breaker is open).
    "FAILOVER_AFTER_ATTEMPTS": int(env_float("OUTBOX_FAILOVER_AFTER_ATTEMPTS", 3)),
    # An API process sends at most one NOTIFY per this many milliseconds (NOTIFY serialises
    # commits on a global lock); dispatchers look once more after this window, so it bounds
    # the wait of a notification whose NOTIFY was skipped: at 25 ms, 1,000/s offered through
    # one API process had a commit-to-send p50 of 16 ms, at 5 ms 4 ms (single POSTs no slower).
    "NOTIFY_DEBOUNCE_MS": env_float("OUTBOX_NOTIFY_DEBOUNCE_MS", 5),
    # Each dispatcher process writes its row in the `dispatcher` table this often; one silent
    # for three intervals is shown as gone in the admin.
    "HEARTBEAT_SECONDS": env_float("OUTBOX_HEARTBEAT_SECONDS", 5),
}

# --- Logging --------------------------------------------------------------------------------
# LOG_FORMAT=json writes one JSON object per line (time, level, logger, process, message and
# the record's extra fields, such as those of the per-attempt delivery line); "plain" is for
# people. Every record passes the secrets filter on its way out: bearer and API keys and the
# configured channels' tokens, secrets and passwords are replaced by [REDACTED].
LOG_FORMAT = (os.environ.get("LOG_FORMAT") or "plain").strip().lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
        "json": {"()": "notifications_project.logging.JsonFormatter"},
    },
    "filters": {"redact_secrets": {"()": "notifications_project.logging.RedactSecretsFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["redact_secrets"]},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's own loggers lose the handlers of its default configuration and go through
        # the root handler above (one format, secrets filtered).
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        "pgserver": {"level": "WARNING"},
        "django.db.backends": {"level": "INFO"},
    },
}

# --- Operations: metrics ---------------------------------------------------------------------
# run_dispatchers --metrics-port / --metrics-addr defaults: the supervisor serves its dispatcher
# processes' Prometheus metrics there (unset: not served).
DISPATCHER_METRICS_PORT = int(env_float("DISPATCHER_METRICS_PORT", 0)) or None
DISPATCHER_METRICS_ADDR = os.environ.get("DISPATCHER_METRICS_ADDR") or "0.0.0.0"

# --- Retention and housekeeping (django-q2) -----------------------------------------------------
# Finished notifications (sent, failed, cancelled, expired) older than this many days (by
# created_at) are deleted with their history; notifications still in the outbox never are.
NOTIFY_RETENTION_DAYS = env_float("NOTIFY_RETENTION_DAYS", 30)
# Dispatcher records whose last heartbeat is older than this many hours are deleted.
NOTIFY_DISPATCHER_RETENTION_HOURS = env_float("NOTIFY_DISPATCHER_RETENTION_HOURS", 24)
# Rows deleted per transaction (each batch is one short statement with FOR UPDATE SKIP LOCKED).
NOTIFY_HOUSEKEEPING_BATCH_SIZE = int(env_float("NOTIFY_HOUSEKEEPING_BATCH_SIZE", 1000))
# A scheduled run stops after this many seconds; the next run goes on where it stopped.
NOTIFY_HOUSEKEEPING_MAX_SECONDS = env_float("NOTIFY_HOUSEKEEPING_MAX_SECONDS", 300)
# `python manage.py qcluster` runs the schedules (hourly; see `manage.py setup_schedules`).
# Its broker is this PostgreSQL (the ORM broker): no other infrastructure. Several qclusters
# against one database are safe: the scheduler locks each due schedule, so a job starts once.
Q_CLUSTER = {
    "name": "notifications",
    "orm": "default",
    "workers": int(env_float("Q_WORKERS", 2)),
    "recycle": 100,
    "timeout": int(env_float("Q_TIMEOUT_SECONDS", 900)),  # above NOTIFY_HOUSEKEEPING_MAX_SECONDS
    "retry": int(env_float("Q_TIMEOUT_SECONDS", 900)) + 60,  # must exceed the timeout
    "max_attempts": 1,  # a failed run is not retried: the next scheduled one does the work
    "queue_limit": 4,
    "bulk": 1,
    "poll": env_float("Q_POLL_SECONDS", 2),  # the ORM broker polls its queue table this often
    "catch_up": False,  # after downtime, run each missed schedule once, not once per missed hour
    "save_limit": 250,  # successful task results kept (admin: Django Q)
    "ack_failures": True,
    "label": "Django Q (housekeeping)",
}
