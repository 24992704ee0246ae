"""Text that came from a provider, made safe to store and to log.

A provider's answer may hold anything: a NUL byte, which PostgreSQL's text type refuses; a
lone surrogate (JSON "\\ud800"), which cannot be encoded as UTF-8 at all; control characters
and bidirectional overrides that forge or garble log lines; megabytes. Channel.deliver passes
every id, error text and status it returns through `clean()`, so the dispatcher, the database
and the logs only ever see its result.
"""

from __future__ import annotations

import math
import re

__all__ = ["clean", "clean_status", "clean_seconds", "ID_MAX", "ERROR_MAX"]

ID_MAX = 255  # NotificationEvent.provider_message_id
ERROR_MAX = 1000  # an error text in the history and the log line
STATUS_MAX = 100

# Replaced by a space: C0 and C1 controls (NUL, CR, LF and the rest), the Unicode line and
# paragraph separators, and the bidirectional embeddings, overrides and isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
# Replaced by U+FFFD: surrogate code points, which only a broken encoder leaves in a str.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPACES = re.compile(" {2,}")


def clean(value: object, *, limit: int, mark_cut: bool = True) -> str:
    """`value` as one line of valid, printable text of at most `limit` characters (a text cut
    short ends with "…", unless not `mark_cut`: an id is cut bare)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - a broken __str__ is one more hostile answer
            text = f"<unprintable {type(value).__name__}>"
    # Cut first (a ten-megabyte answer is not scanned whole), with room for what follows.
    text = text[: limit * 2]
    text = _SURROGATE.sub("\ufffd", text)
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…" if mark_cut else text[:limit]
    return text


def clean_status(status: object) -> int | str | None:
    """A provider's status or error code: an int as it is, anything else as clean text."""
    if status is None or (isinstance(status, int) and not isinstance(status, bool)):
        return status
    return clean(status, limit=STATUS_MAX) or None


def clean_seconds(value: object) -> float | None:
    """A provider's "come back after" as seconds: a finite number >= 0, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
