"""Logs of a dispatcher process with LOG_FORMAT=json: one JSON line per delivery attempt with
its fields, and no secret in any record, even when a backend's errors quote one."""

from __future__ import annotations

import json
import signal

from notifications.models import Notification
from notifications_project.logging import REDACTED
from tests.helpers import enqueue, wait_until


def test_a_dispatcher_with_log_format_json_writes_json_lines_without_secrets(start_dispatchers, channels_file):
    token = "leaky-provider-token-4242"
    leaky = channels_file(
        '[channels.leaky]\nbackend = "tests.channel_backends.LeakyChannel"\n'
        'options = { api_token = "${LEAKY_TOKEN}" }\n'
    )
    (nid,) = enqueue(1, channel="leaky")
    (buggy,) = enqueue(1, channel="leaky", metadata={"bug": True})
    dispatchers = start_dispatchers(
        "--processes", "1", channels_file=leaky,
        env={"LOG_FORMAT": "json", "LEAKY_TOKEN": token, "OUTBOX_RETRY_BASE_SECONDS": "0.2",
             "OUTBOX_RETRY_CAP_SECONDS": "0.5"},
    )
    wait_until(lambda: Notification.objects.get(pk=nid).status == "sent", message="sent on the third attempt")
    wait_until(lambda: Notification.objects.get(pk=buggy).status == "failed", message="the bug fails its notification")
    dispatchers.signal(signal.SIGTERM)
    assert dispatchers.wait() == 0
    log = dispatchers.log()
    assert token not in log
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is JSON
    attempts = [e for e in entries if e["message"].startswith("delivery ") and e["notification_id"] == nid]
    assert [(e["notification_id"], e["channel"], e["attempt"], e["outcome"]) for e in attempts] == [
        (nid, "leaky", 1, "retrying"), (nid, "leaky", 2, "retrying"), (nid, "leaky", 3, "sent")]
    assert all(isinstance(e["duration_ms"], float) and e["logger"] == "outbox.dispatcher" for e in attempts)
    assert "Bearer [REDACTED]" in attempts[0]["error"] and f"token={REDACTED}" in attempts[1]["error"]
    (bug,) = [e for e in entries if "unexpected error in send" in e["message"]]  # logged with its traceback
    assert "Traceback" in bug["message"] and f"api_token={REDACTED}" in bug["message"]
