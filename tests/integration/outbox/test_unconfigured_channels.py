"""Notifications left for a channel that is no longer configured (outbox.unconfigured): named
with their count by `manage.py check`, `run_dispatchers` at start (a real process), the
admin's outbox page and /metrics; `manage.py unconfigured_channels` moves them to a configured
channel of the same kind or fails them with a reason, each with a line in its history, and
leaves alone what a live lease holds."""

from __future__ import annotations

import io
import signal

import pytest
from django.contrib.auth.models import Permission
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from notifications.models import Notification
from outbox import store
from outbox.models import ChannelKind, OutboxEntry
from tests.helpers import claim, enqueue_one, history, status_of, wait_until
from tests.integration.outbox.test_metrics import samples, scrape, value

GONE = "sms-old"  # a channel the tests' channels file does not configure


@pytest.fixture
def stranded(db):
    """Three notifications queued for GONE, an sms channel removed from the channels file
    (its kind recorded while it was configured), and one for email-log (configured)."""
    ChannelKind.objects.create(channel=GONE, kind="sms", backend="channels.backends.twilio_sms.TwilioSmsChannel")
    ids = [enqueue_one(GONE, f"+1415555010{i}", f"code {i}") for i in range(3)]
    enqueue_one("email-log", "alice@example.com", "configured")
    return ids


def unconfigured_channels(*args: str) -> str:
    out = io.StringIO()
    call_command("unconfigured_channels", *args, stdout=out)
    return out.getvalue()


# --- telling the operator -------------------------------------------------------------------------


def test_manage_py_check_names_each_unconfigured_channel_with_its_count(stranded):
    warnings = [m for m in checks.run_checks() if m.id == "outbox.W001"]
    assert len(warnings) == 1 and warnings[0].level == checks.WARNING
    assert f"channel '{GONE}' (sms) is not configured but has 3 notification(s) pending" in warnings[0].msg
    assert f"unconfigured_channels {GONE} --to NAME" in warnings[0].msg

    err = io.StringIO()
    call_command("check", stderr=err, stdout=io.StringIO())  # a warning: the check still passes
    assert "outbox.W001" in err.getvalue() and GONE in err.getvalue()


def test_manage_py_check_is_silent_when_every_pending_channel_is_configured(db):
    enqueue_one("email-log", "alice@example.com", "configured")
    assert not [m for m in checks.run_checks() if m.id == "outbox.W001"]


def test_run_dispatchers_names_them_at_start_and_records_its_channels_kinds(start_dispatchers, stranded):
    process = start_dispatchers("--processes", "1")
    wait_until(lambda: "is not configured" in process.log(), timeout=30, message="the start-up warning")
    assert f"channel '{GONE}' (sms) is not configured but has 3 notification(s) pending" in process.log()
    wait_until(lambda: status_of(stranded[0]) == "queued" and count_sent() == 1, timeout=30,
               message="the configured channel's notification sent, the others left")
    assert dict(ChannelKind.objects.values_list("channel", "kind"))["email-log"] == "email"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert OutboxEntry.objects.filter(channel=GONE).count() == 3  # nothing sends them, nothing removed them


def count_sent() -> int:
    return Notification.objects.filter(status="sent").count()


def test_the_admins_outbox_page_names_them(stranded, django_user_model):
    user = django_user_model.objects.create_user("ops", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_outboxentry"))
    client = Client()
    client.force_login(user)
    response = client.get("/admin/outbox/outboxentry/")
    assert response.status_code == 200
    page = response.content.decode()
    assert f"Channel &#x27;{GONE}&#x27; (sms) is not configured but has 3 notification(s) pending" in page


def test_metrics_export_the_pending_count_of_each_unconfigured_channel(stranded, client):
    text = scrape(client)
    assert value(text, "outbox_unconfigured_pending", channel=GONE) == 3
    assert value(text, "outbox_pending") == 4
    assert [labels for name, labels in samples(text) if name == "outbox_unconfigured_pending"] == [
        (("channel", GONE),)]  # a configured channel's rows are not in it


def test_the_command_lists_them(stranded):
    out = unconfigured_channels()
    assert f"channel '{GONE}' (sms) is not configured but has 3 notification(s) pending" in out


# --- moving them ----------------------------------------------------------------------------------


def test_move_to_a_channel_of_the_same_kind_says_so_in_each_history_and_they_are_sent_from_there(stranded):
    out = unconfigured_channels(GONE, "--to", "sms-log")
    assert f"{GONE}: 3 notification(s) moved to sms-log" in out
    assert not OutboxEntry.objects.filter(channel=GONE).exists()
    for nid in stranded:
        notification = Notification.objects.get(pk=nid)
        assert (notification.channel, notification.status) == ("sms-log", "queued")
        last = history(nid)[-1]
        assert last.status == "queued" and last.note.startswith(f"moved from channel {GONE} (no longer configured) "
                                                                f"to sms-log by ")
    # A dispatcher serving sms-log takes them now.
    deliveries = claim(channels=("sms-log",))
    assert sorted(d.notification_id for d in deliveries) == sorted(stranded)
    assert unconfigured_channels() == "every channel with pending notifications is configured\n"


def test_move_to_a_channel_of_another_kind_is_refused_and_changes_nothing(stranded):
    with pytest.raises(CommandError, match="was of kind 'sms' and 'email-log' is of kind 'email'.*sms-log"):
        unconfigured_channels(GONE, "--to", "email-log")
    assert OutboxEntry.objects.filter(channel=GONE).count() == 3
    assert all(len(history(nid)) == 1 for nid in stranded)


def test_move_with_an_unknown_kind_checks_each_notification_against_the_target(db):
    """No kind recorded (removed before this service recorded kinds): the target's own
    validation decides, notification by notification; those it refuses stay, reported."""
    phone = enqueue_one("legacy", "+14155550100", "a text")
    email = enqueue_one("legacy", "bob@example.com", "an email")
    with pytest.raises(CommandError, match="1 still pending"):
        unconfigured_channels("legacy", "--to", "sms-log")
    assert Notification.objects.get(pk=phone).channel == "sms-log"
    assert Notification.objects.get(pk=email).channel == "legacy"
    assert OutboxEntry.objects.get(notification_id=email).channel == "legacy"
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("unconfigured_channels", "legacy", "--to", "sms-log", stdout=out)
    assert "sms-log refuses it: to:" in out.getvalue()
    unconfigured_channels("legacy", "--to", "email-log")  # the email one goes where it fits
    assert Notification.objects.get(pk=email).channel == "email-log"


def test_the_command_refuses_what_it_should_not_touch(stranded):
    with pytest.raises(CommandError, match="is configured"):
        unconfigured_channels("email-log", "--fail")
    with pytest.raises(CommandError, match="unknown channel 'nowhere'"):
        unconfigured_channels(GONE, "--to", "nowhere")
    with pytest.raises(CommandError, match="status webhooks"):
        unconfigured_channels(GONE, "--to", "status-webhooks")
    with pytest.raises(CommandError, match="--to NAME.*--fail"):
        unconfigured_channels(GONE)
    with pytest.raises(CommandError, match="--reason goes with --fail"):
        unconfigured_channels(GONE, "--to", "sms-log", "--reason", "x")
    assert OutboxEntry.objects.filter(channel=GONE).count() == 3


def test_a_row_under_a_live_lease_is_left_to_its_dispatcher(stranded):
    """A dispatcher with an older channels file still serves the channel: its leased row stays
    (and what it records counts), the others move."""
    (held,) = store.claim(dispatcher="old-host", limit=1, lease_seconds=60, channels=[GONE])
    with pytest.raises(CommandError, match="1 still pending"):
        unconfigured_channels(GONE, "--to", "sms-log")
    assert OutboxEntry.objects.get(pk=held.outbox_id).channel == GONE
    assert OutboxEntry.objects.filter(channel="sms-log").count() == 2
    assert store.record_outcomes([store.Outcome(held, "sent")], dispatcher="old-host") == 1
    assert status_of(held.notification_id) == "sent"


def test_a_lapsed_send_moves_back_to_retrying_and_its_old_holder_records_nothing(stranded):
    (started,) = store.claim(dispatcher="dead-host", limit=1, lease_seconds=60, channels=[GONE], start={GONE: 1})
    assert status_of(started.notification_id) == "sending"
    with connection.cursor() as cursor:  # the lease lapsed: the host died during the send
        cursor.execute("UPDATE outbox SET run_at = now() - interval '1 second' WHERE id = %s", [started.outbox_id])
    unconfigured_channels(GONE, "--to", "sms-log")
    notification = Notification.objects.get(pk=started.notification_id)
    assert (notification.channel, notification.status) == ("sms-log", "retrying")
    assert "outcome unknown" in notification.last_error
    assert "the send of attempt 1 had started on sms-old and its outcome is unknown" in history(notification.id)[-1].note
    assert store.record_outcomes([store.Outcome(started, "sent")], dispatcher="dead-host") == 0  # fenced out
    assert status_of(started.notification_id) == "retrying"


# --- failing them ---------------------------------------------------------------------------------


def test_fail_keeps_each_notification_failed_with_the_reason_in_its_history(stranded):
    out = unconfigured_channels(GONE, "--fail", "--reason", "provider contract ended")
    reason = f"channel {GONE} is no longer configured: provider contract ended"
    assert f"{GONE}: 3 notification(s) failed ({reason})" in out
    assert not OutboxEntry.objects.filter(channel=GONE).exists()
    for nid in stranded:
        notification = Notification.objects.get(pk=nid)  # kept: nothing deleted silently
        assert (notification.status, notification.last_error, notification.channel) == ("failed", reason, GONE)
        last = history(nid)[-1]
        assert last.status == "failed" and last.error == reason
        assert last.note.startswith("failed by ") and last.note.endswith(f"channel {GONE} is no longer configured")
    assert Notification.objects.get(channel="email-log").status == "queued"  # others untouched
    assert unconfigured_channels() == "every channel with pending notifications is configured\n"


def test_fail_leaves_a_row_under_a_live_lease(stranded):
    store.claim(dispatcher="old-host", limit=1, lease_seconds=60, channels=[GONE])
    with pytest.raises(CommandError, match="1 still pending"):
        unconfigured_channels(GONE, "--fail")
    failed = Notification.objects.filter(status="failed")
    assert failed.count() == 2 and {n.last_error for n in failed} == {f"channel {GONE} is no longer configured"}
    assert OutboxEntry.objects.filter(channel=GONE, locked_by="old-host").count() == 1
