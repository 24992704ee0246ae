"""Log formatting and the secrets filter, wired in settings.LOGGING (and gunicorn.conf.py).

- JsonFormatter: LOG_FORMAT=json, one JSON object per line.
- RedactSecretsFilter: on the root handler, so that every record leaves the process with
  bearer and API keys, Authorization header values and the configured channels' secrets
  replaced by [REDACTED].
- BatchedStreamHandler: gunicorn's access log, written a batch of lines at a time.

Nothing here imports Django at module level: gunicorn's master process loads it from its
configuration file before any Django setting exists.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterable

REDACTED = "[REDACTED]"

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, process, message,
    then the record's `extra` fields, and the traceback as `exception` if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


# --- secrets ----------------------------------------------------------------------------------

# Channel options whose values are secrets, by name (nested tables included: an email
# channel's connection.password, an ESP's connection.api_key).
SECRET_OPTION_NAME = re.compile(r"token|secret|password|passwd|api_?key|private_?key|credential", re.IGNORECASE)
# A secret shorter than this is not looked for: it would match ordinary words.
MIN_SECRET_LENGTH = 4

_PATTERNS: list[tuple[re.Pattern, str]] = [
    # Authorization: <scheme> <credentials>, as a header line, a header dict or WSGI's META.
    (re.compile(r"""(?i)(authorization["']?\s*[:=]\s*["']?)(?:(bearer|basic|token|digest)\s+)?[^\s"',;}]+"""),
     lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}"),
    # A bearer credential anywhere.
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]+"), lambda m: f"{m.group(1)}{REDACTED}"),
    # Our API keys (ntf_ and 32 random characters). A key's 12-character prefix, which lists
    # show to tell keys apart, is not a secret and is left alone.
    (re.compile(r"\bntf_[A-Za-z0-9_\-]{12,}"), lambda m: f"ntf_{REDACTED}"),
]


def channel_secrets(channels: dict[str, dict]) -> set[str]:
    """The values of secret-named options of every channel (NOTIFICATION_CHANNELS' shape)."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, secret or bool(SECRET_OPTION_NAME.search(str(key))))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item, secret)
        elif secret and isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)

    for config in (channels or {}).values():
        walk((config or {}).get("OPTIONS", {}), False)
    return found


class Redactor:
    """Replaces secrets in text: the fixed patterns above and a set of literal values."""

    def __init__(self, secrets: Iterable[str] = ()):
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._literal = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def __call__(self, text: str) -> str:
        if self._literal is not None:
            text = self._literal.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


_PATTERNS_ONLY = Redactor()


class RedactSecretsFilter(logging.Filter):
    """Rewrites a record so that no secret reaches a handler: its message (with its arguments
    merged in), its string `extra` fields and its traceback. Never drops a record.

    With `secrets=None` the channels' secrets are read from settings.NOTIFICATION_CHANNELS on
    first use (the filter is built while settings are still being configured); a process
    without Django settings (gunicorn's master) gets the fixed patterns only.
    """

    def __init__(self, name: str = "", secrets: Iterable[str] | None = None):
        super().__init__(name)
        self._redact: Redactor | None = Redactor(secrets) if secrets is not None else None
        self._lock = threading.Lock()

    @property
    def redact(self) -> Redactor:
        if self._redact is None:
            secrets = self._configured_secrets()
            if secrets is None:
                return _PATTERNS_ONLY  # not cached: settings may come later (gunicorn workers)
            with self._lock:
                if self._redact is None:
                    self._redact = Redactor(secrets)
        return self._redact

    @staticmethod
    def _configured_secrets() -> set[str] | None:
        try:
            from django.conf import settings

            if not settings.configured:
                return None
            return channel_secrets(getattr(settings, "NOTIFICATION_CHANNELS", {}))
        except Exception:  # settings not importable: patterns only, never a lost record
            return None

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redact
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        for key, value in _extras(record).items():
            if isinstance(value, str):
                cleaned = redact(value)
                if cleaned != value:
                    setattr(record, key, cleaned)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class BatchedStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes its lines in batches: at most `interval` seconds after a
    line, or at once when `capacity` lines wait, or a record of WARNING or above comes (and at
    exit). One write and flush per batch instead of one per line (per request, for an access
    log). A process killed outright loses at most `interval` seconds of lines.

    Forked processes (gunicorn's workers) each batch their own lines with a thread of their
    own, started by their first line.
    """

    def __init__(self, stream=None, *, interval: float = 0.5, capacity: int = 256):
        super().__init__(stream)
        self.interval = interval
        self.capacity = capacity
        self._lines: list[str] = []
        self._pid: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # as StreamHandler does: a record that cannot be formatted is reported
            self.handleError(record)
            return
        with self.lock:
            if self._pid != os.getpid():  # the first line of this process: its own thread
                self._pid = os.getpid()
                self._lines = []  # (lines the parent had not written are its to write)
                threading.Thread(target=self._write_periodically, name="log-batches", daemon=True).start()
            self._lines.append(line)
            urgent = len(self._lines) >= self.capacity or record.levelno >= logging.WARNING
        if urgent:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            lines, self._lines = self._lines, []
            if lines and self.stream is not None:
                try:
                    self.stream.write("".join(lines))
                    self.stream.flush()
                except (OSError, ValueError):  # a closed or broken stream: nothing better to do
                    pass

    def _write_periodically(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(self.interval)
            self.flush()
