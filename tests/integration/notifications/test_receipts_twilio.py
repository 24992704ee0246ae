"""Delivery receipts from Twilio, end to end: the API under gunicorn and a dispatcher process on
the test database, the Twilio stand-in (tests/provider_standins/twilio_sms.py) in this process
posting its signed status callbacks to the API's /receipts/twilio/sms; and a Slack channel that
is gone, which suppresses its recipient.

One set of processes serves the whole module (starting them is most of a test's time): every
test has its own API key and recipients, and the database is emptied after each test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifications.auth import api_key_create
from notifications.models import Notification, NotificationEvent, Receipt
from outbox.models import OutboxEntry
from tests.helpers import (
    ROOT,
    ApiProcess,
    DispatcherProcess,
    database_url,
    free_port,
    http_get,
    tenant,
    wait_until,
)
from tests.provider_standins import PROXY_VARIABLES
from tests.provider_standins.slack import SLACK_CHANNELS_TOML, TOKEN, SlackStandIn, slack_error
from tests.provider_standins.twilio_sms import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    DELIVERED_TO,
    OPTED_OUT_TO,
    TWILIO_CHANNELS_TOML,
    UNDELIVERED_TO,
    StatusCallback,
    TwilioStandIn,
    post_status_callback,
    status_callback_params,
    twilio_error,
    twilio_signature,
)

SOURCE = "twilio:sms"
OPT_OUT_TITLE = "Attempt to send to unsubscribed recipient (the recipient replied STOP)"


# --- the processes, shared by the module -----------------------------------------------------------


@dataclass
class Service:
    api: ApiProcess
    dispatchers: DispatcherProcess
    twilio: TwilioStandIn
    slack: SlackStandIn
    receipts_url: str  # the sms channel's status_callback_url


@pytest.fixture(scope="module")
def service(django_db_setup, tmp_path_factory):
    """The API (2 gunicorn workers) and one dispatcher process, configured with the channels
    "sms" (Twilio stand-in, status callbacks to the API) and "slack" (Slack stand-in)."""
    tmp = tmp_path_factory.mktemp("receipts-twilio")
    port = free_port()
    receipts_url = f"http://127.0.0.1:{port}/receipts/twilio/sms"
    with TwilioStandIn() as twilio, SlackStandIn() as slack:
        channels = tmp / "channels.toml"
        channels.write_text(TWILIO_CHANNELS_TOML.format(base_url=twilio.url, timeout=2)
                            + f'status_callback_url = "{receipts_url}"\n'
                            + SLACK_CHANNELS_TOML.format(base_url=slack.base_url, timeout=2))
        env = {
            **{name: value for name, value in os.environ.items() if name not in PROXY_VARIABLES},  # loopback only
            "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1", "NOTIFY_CHANNELS_FILE": str(channels),
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "SLACK_BOT_TOKEN": TOKEN,
            "OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
        }
        # As the `start_dispatchers` and `start_api` fixtures start them (tests/conftest.py),
        # once for the module, and the API on the port that the channels file names.
        with open(tmp / "dispatchers.log", "w") as log:
            dispatchers = DispatcherProcess(subprocess.Popen(
                [sys.executable, "manage.py", "run_dispatchers", "--processes", "1", "--threads", "4"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), tmp / "dispatchers.log")
        with open(tmp / "gunicorn.log", "w") as log:
            api = ApiProcess(subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "notifications_project/gunicorn.conf.py",
                 "notifications_project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
                port, tmp / "gunicorn.log", workers=2)
        try:
            wait_until(api.ready, timeout=30, message="gunicorn to answer")
            yield Service(api, dispatchers, twilio, slack, receipts_url)
        finally:
            api.stop()
            if dispatchers.popen.poll() is None:
                dispatchers.kill_all()


class Client:
    """An API client of the service, with a key of its own."""

    def __init__(self, service: Service):
        self.service = service
        _, key = api_key_create(client=tenant("receipt-tests"))
        self.headers = {"Authorization": f"Bearer {key}"}

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        status, _, data = self.service.api.request(method, path, body, headers=self.headers)
        return status, data

    def notify(self, to: str, channel: str = "sms", **fields) -> dict:
        status, data = self.request("POST", "/api/v1/notifications",
                                    {"channel": channel, "to": to, "message": "Your code is 123456", **fields})
        assert status == 202, data
        return data

    def get(self, nid: str) -> dict:
        status, data = self.request("GET", f"/api/v1/notifications/{nid}")
        assert status == 200, data
        return data

    def wait_for(self, nid: str, status: str, timeout: float = 15) -> dict:
        wait_until(lambda: Notification.objects.get(pk=nid).status == status, timeout=timeout,
                   message=f"notification {nid} {status}")
        return self.get(nid)

    def suppressions(self, **query) -> list[dict]:
        status, data = self.request("GET", "/api/v1/suppressions" + (f"?{urlencode(query)}" if query else ""))
        assert status == 200, data
        return data["results"]


@pytest.fixture
def api(service, transactional_db) -> Client:
    return Client(service)


@pytest.fixture
def twilio(service) -> TwilioStandIn:
    return service.twilio


def receipt_notes(notification: dict) -> list[str]:
    return [e["note"] for e in notification["events"] if e["note"].startswith("receipt from")]


def receipt_event(notification: dict, provider_status: str) -> dict:
    """The history event of the notification's one receipt with `provider_status`."""
    (event,) = [e for e in notification["events"] if e["note"].startswith(f"receipt from {SOURCE}: {provider_status}")]
    return event


def wait_for_receipts(api: Client, nid: str, count: int) -> dict:
    """The notification once `count` receipts are in its history (one that came before its send
    was recorded is applied within a poll interval of the dispatchers)."""
    wait_until(lambda: NotificationEvent.objects.filter(notification_id=nid, note__startswith="receipt from").count() >= count,
               message=f"{count} receipts applied to {nid}")
    return api.get(nid)


def wait_for_callbacks(twilio: TwilioStandIn, sid: str, count: int) -> list:
    """The `count` callbacks posted about `sid`, once all are answered (each 200)."""
    callbacks = wait_until(lambda: len(twilio.callbacks_about(sid)) >= count and twilio.callbacks_about(sid),
                           message=f"{count} callbacks about {sid}")
    assert [c.answer for c in callbacks] == [200] * count
    return callbacks


def sent_with_callbacks(api: Client, twilio: TwilioStandIn, to: str, *callbacks: StatusCallback) -> tuple[str, str]:
    """Send one notification to `to` whose message gets `callbacks`; (its id, its SID) once sent."""
    twilio.script_callbacks(to, *callbacks)
    nid = api.notify(to)["id"]
    wait_until(lambda: Notification.objects.get(pk=nid).status != "queued"
               and Notification.objects.get(pk=nid).provider_message_id, message="the send recorded")
    return nid, Notification.objects.get(pk=nid).provider_message_id


def receipts_metric(service: Service, result: str) -> float:
    text = http_get(f"{service.api.url}/metrics")
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "notifications_receipts_total" and s.labels == {"source": SOURCE, "result": result})


# --- receipts through the stand-in ------------------------------------------------------------------


def test_a_delivered_callback_makes_the_notification_delivered(api, twilio, service):
    nid = api.notify(DELIVERED_TO)["id"]

    api.wait_for(nid, "delivered")

    (request,) = twilio.sends_to(DELIVERED_TO)
    assert request.form["StatusCallback"] == service.receipts_url  # set on the message by the channel
    wait_for_callbacks(twilio, request.sid, 2)  # "sent", then "delivered"
    notification = wait_for_receipts(api, nid, 2)
    assert (notification["status"], notification["provider_message_id"]) == ("delivered", request.sid)
    assert [(e["status"], e["attempt"]) for e in notification["events"]][:2] == [("queued", 0), ("sent", 1)]
    # ("sent" is history only; either may be applied first, when it came before the send was recorded)
    assert sorted(receipt_notes(notification)) == ["receipt from twilio:sms: delivered", "receipt from twilio:sms: sent"]
    delivered = receipt_event(notification, "delivered")
    assert (delivered["status"], delivered["provider_message_id"], delivered["error"]) == ("delivered", request.sid, "")


def test_an_undelivered_callback_keeps_its_error_code_in_last_error_and_history(api, twilio):
    nid = api.notify(UNDELIVERED_TO)["id"]

    api.wait_for(nid, "undelivered")

    notification = wait_for_receipts(api, nid, 2)  # "sent", then "undelivered" 30003
    assert (notification["status"], notification["last_error"]) == ("undelivered", "30003")
    undelivered = receipt_event(notification, "undelivered")
    assert (undelivered["status"], undelivered["error"], undelivered["note"]) == (
        "undelivered", "30003", "receipt from twilio:sms: undelivered")
    assert not api.suppressions()  # an unreachable handset is not an opt-out


def test_an_opt_out_callback_suppresses_the_recipient_until_a_notification_ignores_suppression(api, twilio):
    first = api.notify(OPTED_OUT_TO)["id"]
    notification = api.wait_for(first, "undelivered")
    assert notification["last_error"] == f"21610: {OPT_OUT_TITLE}"
    assert notification["events"][-1]["note"] == ("receipt from twilio:sms: failed; "
                                                  "recipient added to the suppression list")
    (entry,) = api.suppressions()
    assert (entry["kind"], entry["to"], entry["notification_id"]) == ("sms", OPTED_OUT_TO, first)
    assert entry["reason"] == f"Twilio error 21610: {OPT_OUT_TITLE}"

    # The next one is accepted as suppressed and never sent.
    suppressed = api.notify("+1 415 555 0113")  # the same number, however written
    assert suppressed["status"] == "suppressed"
    assert "on the suppression list for sms" in api.get(suppressed["id"])["events"][-1]["note"]
    assert not OutboxEntry.objects.filter(notification_id=suppressed["id"]).exists()
    api.wait_for(api.notify(DELIVERED_TO)["id"], "delivered")  # the dispatcher has been at work since
    assert len(twilio.sends_to(OPTED_OUT_TO)) == 1
    assert Notification.objects.get(pk=suppressed["id"]).status == "suppressed"

    # Unless the request says so.
    twilio.script_callbacks(OPTED_OUT_TO)  # no callbacks this time: it stays sent
    forced = api.notify(OPTED_OUT_TO, ignore_suppression=True)
    assert forced["status"] == "queued"
    api.wait_for(forced["id"], "sent")
    assert len(twilio.sends_to(OPTED_OUT_TO)) == 2


def test_a_send_refused_with_21610_fails_and_suppresses_the_recipient(api, twilio):
    to = "+14155550121"
    twilio.script(to, twilio_error(21610, 400, "Attempt to send to unsubscribed recipient"))
    nid = api.notify(to)["id"]

    notification = api.wait_for(nid, "failed")

    assert notification["attempts"] == 1
    failed = notification["events"][-1]
    assert (failed["status"], failed["attempt"]) == ("failed", 1)
    assert "21610" in failed["error"] and "unsubscribed recipient" in failed["error"]
    assert "recipient added to the suppression list" in failed["note"]
    (entry,) = api.suppressions(kind="sms")
    assert (entry["to"], entry["notification_id"]) == (to, nid)
    assert api.notify(to)["status"] == "suppressed"
    assert len(twilio.sends_to(to)) == 1


# --- what the receipts view refuses or ignores ------------------------------------------------------


def test_unsigned_and_wrongly_signed_callbacks_answer_403_and_change_nothing(api, twilio, service):
    nid, sid = sent_with_callbacks(api, twilio, "+14155550131")  # no callbacks: it stays sent
    before = api.get(nid)
    assert before["status"] == "sent"
    params = status_callback_params(sid=sid, to="+14155550131", status="failed", error_code=21610)
    forged_before = receipts_metric(service, "forged")

    assert post_status_callback(service.receipts_url, params, signature=None) == 403
    assert post_status_callback(service.receipts_url, params, twilio_signature(service.receipts_url, params,
                                                                              auth_token="not-the-token")) == 403
    # Signed for another URL, or with its fields changed after signing: forged too.
    assert post_status_callback(service.receipts_url, params,
                                twilio_signature(f"{service.api.url}/elsewhere", params)) == 403
    signature = twilio_signature(service.receipts_url, params)
    assert post_status_callback(service.receipts_url, {**params, "ErrorCode": "30003"}, signature) == 403

    assert api.get(nid) == before
    assert not Receipt.objects.exists()
    assert not api.suppressions()
    assert receipts_metric(service, "forged") == forged_before + 4


def test_the_same_callback_twice_changes_nothing_the_second_time(api, twilio):
    nid, sid = sent_with_callbacks(api, twilio, "+14155550132", StatusCallback("delivered", copies=2))

    wait_for_callbacks(twilio, sid, 2)  # both answered 200
    notification = api.wait_for(nid, "delivered")

    assert receipt_notes(notification) == ["receipt from twilio:sms: delivered"]
    assert Receipt.objects.filter(provider_message_id=sid).count() == 1


def test_a_callback_for_an_unknown_message_answers_200_and_is_counted_pending(api, service):
    sid = "SM" + "0" * 32
    params = status_callback_params(sid=sid, to="+14155550133", status="delivered")
    pending_before = receipts_metric(service, "pending")

    assert post_status_callback(service.receipts_url, params, twilio_signature(service.receipts_url, params)) == 200

    assert receipts_metric(service, "pending") == pending_before + 1
    (receipt,) = Receipt.objects.filter(provider_message_id=sid)
    assert (receipt.outcome, receipt.applied_at, receipt.notification_id) == ("delivered", None, None)


def test_a_signed_callback_without_message_sid_answers_400_and_stores_nothing(api, service):
    params = status_callback_params(sid="", to="+14155550134", status="delivered")
    del params["MessageSid"], params["SmsSid"]

    status = post_status_callback(service.receipts_url, params, twilio_signature(service.receipts_url, params))

    assert status == 400
    assert not Receipt.objects.exists()


# --- order --------------------------------------------------------------------------------------------


def test_a_delivered_callback_before_the_send_is_recorded_still_ends_delivered(api, twilio):
    to = "+14155550141"
    # Posted, and answered, before Twilio answers the create call: the dispatcher cannot have
    # recorded the send yet, so the receipt waits for it.
    nid, sid = sent_with_callbacks(api, twilio, to, StatusCallback("delivered", before_answer=True))

    notification = api.wait_for(nid, "delivered")

    (callback,) = wait_for_callbacks(twilio, sid, 1)
    (request,) = twilio.sends_to(to)
    assert request.sid == sid
    receipt = Receipt.objects.get(provider_message_id=sid)
    sent = NotificationEvent.objects.get(notification_id=nid, status="sent")
    assert receipt.received_at < sent.created_at < receipt.applied_at  # came first, applied after
    assert [(e["status"], e["note"]) for e in notification["events"]] == [
        ("queued", ""), ("sent", ""), ("delivered", "receipt from twilio:sms: delivered")]


def test_undelivered_then_a_late_delivered_ends_undelivered(api, twilio):
    # The late one comes half a second after: the first is applied by then (within a poll interval).
    nid, sid = sent_with_callbacks(api, twilio, "+14155550142", StatusCallback("undelivered", 30003),
                                   StatusCallback("delivered", delay=0.5))

    api.wait_for(nid, "undelivered")
    wait_for_callbacks(twilio, sid, 2)
    notification = wait_for_receipts(api, nid, 2)

    assert notification["status"] == "undelivered"
    assert notification["last_error"] == "30003"
    assert receipt_notes(notification) == ["receipt from twilio:sms: undelivered", "receipt from twilio:sms: delivered"]


# --- configuration ------------------------------------------------------------------------------------


def test_the_channel_list_shows_where_twilio_posts_receipts(api, service):
    status, data = api.request("GET", "/api/v1/channels")

    assert status == 200
    channels = {c["name"]: c for c in data["channels"]}
    assert channels["sms"]["receipts_url"] == service.receipts_url  # the request's host and port
    assert channels["slack"]["receipts_url"] is None


# --- Slack -----------------------------------------------------------------------------------------------


def test_a_slack_channel_not_found_fails_and_suppresses_the_channel(api, service):
    gone = "C0GONE0001"
    service.slack.script(gone, slack_error("channel_not_found"))
    nid = api.notify(gone, channel="slack")["id"]

    notification = api.wait_for(nid, "failed")

    assert "channel_not_found" in notification["events"][-1]["error"]
    (entry,) = api.suppressions(kind="slack")
    assert (entry["to"], entry["notification_id"]) == (gone, nid)
    assert api.notify(gone, channel="slack")["status"] == "suppressed"
    assert len([r for r in service.slack.requests if r.json.get("channel") == gone]) == 1
