"""The webhook channel end to end: a real dispatcher process on the test database posts signed
notifications to a receiver (tests/provider_standins/webhook.py) in this process."""

from __future__ import annotations

from notifications.models import Notification
from tests.helpers import enqueue_one, fast_retries, history, start_dispatcher, wait_until_settled
from tests.provider_standins import Reply
from tests.provider_standins.webhook import SECRET, Received, Receiver


def test_a_dispatcher_posts_signed_notifications_and_records_the_receivers_ids(start_dispatchers, channels_file):
    calls: dict[str, int] = {}

    def respond(received: Received) -> Reply:
        calls[received.path] = calls.get(received.path, 0) + 1
        if received.path == "/busy" and calls[received.path] == 1:
            return Reply(503, {"error": "maintenance"}, {"Retry-After": "1"})
        if received.path == "/busy":
            return Reply(202, headers={"X-Request-Id": "req-after-retry"})
        if received.path == "/gone":
            return Reply(410, {"error": "this hook was deleted"})
        return Reply(200, {"id": f"rcv-{received.json()['id']}"})

    with Receiver(respond) as receiver:
        base = f"http://127.0.0.1:{receiver.port}"
        toml = (
            f"""
[channels.webhook]
backend = "channels.backends.webhook.WebhookChannel"
[channels.webhook.options]
secret = "${{TEST_WEBHOOK_SECRET}}"
allow_private_targets = true
timeout = 5
targets = {{ ops = "{base}/ops", busy = "{base}/busy", gone = "{base}/gone" }}
"""
        )
        ids = {}
        for target in ("ops", "busy", "gone"):
            ids[target] = enqueue_one("webhook", target, f"to {target}", subject="deploy", metadata={"env": "prod"})
        start_dispatcher(start_dispatchers, channels_file, toml, {"TEST_WEBHOOK_SECRET": SECRET, **fast_retries("0.2", "0.5")})
        wait_until_settled(ids.values(), message="all three settled")

    assert all(r.signature_valid for r in receiver.received)
    (ops_request,) = [r for r in receiver.received if r.path == "/ops"]
    payload = ops_request.json()
    assert payload["id"] == ids["ops"] == ops_request.headers["x-notify-notification-id"]
    assert (payload["to"], payload["message"], payload["metadata"], payload["attempt"]) == ("ops", "to ops", {"env": "prod"}, 1)
    assert [(e.status, e.provider_message_id) for e in history(ids["ops"])] == [("queued", ""), ("sent", f"rcv-{ids['ops']}")]

    queued, retry, sent = history(ids["busy"])
    assert (retry.status, retry.attempt, sent.status, sent.attempt) == ("retrying", 1, "sent", 2)
    assert "HTTP 503" in retry.error and (sent.created_at - retry.created_at).total_seconds() >= 1
    assert sent.provider_message_id == "req-after-retry"
    busy_attempts = [r.json()["attempt"] for r in receiver.received if r.path == "/busy"]
    assert busy_attempts == [1, 2]

    assert [(e.status, e.attempt) for e in history(ids["gone"])] == [("queued", 0), ("failed", 1)]
    assert "HTTP 410" in Notification.objects.get(pk=ids["gone"]).last_error
