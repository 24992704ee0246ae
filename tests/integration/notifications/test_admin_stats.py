"""The admin's statistics page (with its server-side SVG chart) and the rendered message on a
notification's page, through Django's test client against the real database."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection

from notifications.models import Notification
from tests.helpers import enqueue, tenant

STATS_URL = "/admin/notifications/notification/stats/"
SVG = "{http://www.w3.org/2000/svg}"


def db_now() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        return cursor.fetchone()[0]


def add(channel: str, status: str, ago: timedelta, *, latency: timedelta | None = None, error: str = "", client: str = "tests"):
    created = db_now() - ago
    return Notification.objects.create(
        client=tenant(client), channel=channel, recipient="someone@example.com", message="m", status=status,
        created_at=created, sent_at=created + latency if latency is not None else None, last_error=error,
    )


def svgs(html: str) -> list[ET.Element]:
    """Every chart of the page, parsed as XML (so each is well-formed)."""
    found, start = [], 0
    while (start := html.find('<svg xmlns="http://www.w3.org/2000/svg" class="deliveries-chart"', start)) != -1:
        end = html.index("</svg>", start) + len("</svg>")
        found.append(ET.fromstring(html[start:end]))
        start = end
    return found


def test_statistics_page_shows_the_figures_and_the_charts(admin_client):
    add("email-log", "sent", timedelta(minutes=5), latency=timedelta(milliseconds=200))
    add("email-log", "sent", timedelta(minutes=5), latency=timedelta(milliseconds=400))
    add("sms-log", "sent", timedelta(minutes=20), latency=timedelta(seconds=3))
    add("email-log", "failed", timedelta(minutes=7), error="SMTP server refused the recipient: 550 <b>no</b>")
    add("email-log", "failed", timedelta(hours=5), error="SMTP server answered 421 try later", client="other")
    add("sms-log", "queued", timedelta(hours=30))  # older than a day: in neither window

    response = admin_client.get(STATS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Delivery statistics" in html
    for heading in ("Last hour", "Last day", "Deliveries per minute", "By status and channel",
                    "Latency from acceptance to sent", "Top failure reasons"):
        assert heading in html

    hour, day = response.context["windows"]
    assert (hour["accepted"], hour["delivered"], hour["failed"]) == (4, 3, 1)
    assert (day["accepted"], day["delivered"], day["failed"]) == (5, 3, 2)  # all clients
    assert [row["channel"] for row in hour["channel_rows"]] == ["email-log", "sms-log"]
    latency = {row["channel"]: row for row in hour["latency_seconds"]}
    assert latency["email-log"]["p50"] == pytest.approx(0.3) and latency["sms-log"]["p99"] == pytest.approx(3.0)
    assert "0.300 s" in html and "3.000 s" in html
    assert "421 try later" in html

    # Failure reasons are escaped.
    assert "550 &lt;b&gt;no&lt;/b&gt;" in html and "<b>no</b>" not in html

    # Two charts, server-side SVG: bars for the hour (one per minute with deliveries), a filled
    # step line for the day's 1,440 minutes; no script, nothing from elsewhere.
    charts = svgs(html)
    assert len(charts) == 2
    hour_chart, day_chart = charts
    bars = hour_chart.findall(f"{SVG}rect")
    assert sum(int(bar.find(f"{SVG}title").text.rsplit(": ", 1)[1]) for bar in bars) == 3
    assert day_chart.findall(f"{SVG}path") and not day_chart.findall(f"{SVG}rect")
    assert "<script" not in html.split('id="content-main"', 1)[1]
    assert "cdn" not in html.lower() and "https://" not in html


def test_statistics_page_with_nothing_to_show(admin_client):
    response = admin_client.get(STATS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "No deliveries in this window" in html and "No failures in this window." in html
    assert len(svgs(html)) == 2


def test_statistics_page_is_linked_from_the_changelist_and_the_index(admin_client):
    assert STATS_URL in admin_client.get("/admin/notifications/notification/").content.decode()
    assert STATS_URL in admin_client.get("/admin/").content.decode()


def test_statistics_page_needs_the_admin_login(client, db):
    response = client.get(STATS_URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/") and "next=" in response["Location"]


def test_statistics_page_needs_the_permission_to_view_notifications(client, db):
    staff = User.objects.create_user("operator", password="secret-password", is_staff=True)
    client.force_login(staff)
    assert client.get(STATS_URL).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_notification"))
    staff = User.objects.get(pk=staff.pk)  # drop the permission cache
    client.force_login(staff)
    assert client.get(STATS_URL).status_code == 200


# --- the rendered message on a notification's page ---------------------------------------------


def test_rendered_message_of_a_log_channel_is_escaped(admin_client):
    (nid,) = enqueue(1, channel="email-log")
    Notification.objects.filter(pk=nid).update(subject="Hi <b>there</b>", message="Hello <script>alert(1)</script>\nBye")
    html = admin_client.get(f"/admin/notifications/notification/{nid}/change/").content.decode()
    assert "Rendered message" in html
    assert "To: user0@example.com\nSubject: Hi &lt;b&gt;there&lt;/b&gt;\n\nHello &lt;script&gt;alert(1)&lt;/script&gt;\nBye" in html
    assert "<script>alert(1)</script>" not in html


def test_rendered_message_of_an_email_channel_has_its_headers(admin_client, settings):
    settings.NOTIFICATION_CHANNELS = {
        **settings.NOTIFICATION_CHANNELS,
        "email-local": {"BACKEND": "channels.backends.email.EmailChannel", "OPTIONS": {
            "from_email": "Notifications <notify@example.com>", "connection": {"host": "localhost", "port": 1025}}},
    }
    (nid,) = enqueue(1, channel="email-local", subject="Welcome")
    html = admin_client.get(f"/admin/notifications/notification/{nid}/change/").content.decode()
    assert "email through email-local (django.core.mail.backends.smtp.EmailBackend)" in html
    assert (f"From: Notifications &lt;notify@example.com&gt;\nTo: user0@example.com\nSubject: Welcome\n"
            f"Content-Type: text/plain; charset=utf-8\nX-Notify-Notification-Id: {nid}\n\nmessage 0") in html


def test_rendered_message_of_sms_webhook_and_unknown_channels(admin_client, settings):
    settings.NOTIFICATION_CHANNELS = {
        **settings.NOTIFICATION_CHANNELS,
        "hook": {"BACKEND": "channels.backends.webhook.WebhookChannel", "OPTIONS": {
            "secret": "s3cret", "targets": {"ops": "https://hooks.example.com/notify"}}},
    }
    sms = Notification.objects.create(client=tenant(), channel="sms-log", recipient="+14155550100", subject="ignored", message="Code 1")
    hook = Notification.objects.create(client=tenant(), channel="hook", recipient="ops", message='say "hi"', metadata={"k": 1})
    gone = Notification.objects.create(client=tenant(), channel="removed-channel", recipient="x", message="body")

    html = admin_client.get(f"/admin/notifications/notification/{sms.pk}/change/").content.decode()
    assert "SMS through sms-log" in html and "(the subject is not sent)" in html and "To: +14155550100\n\nCode 1" in html

    html = admin_client.get(f"/admin/notifications/notification/{hook.pk}/change/").content.decode()
    assert "JSON POSTed by hook to target" in html
    assert "&quot;message&quot;: &quot;say \\&quot;hi\\&quot;&quot;" in html and "s3cret" not in html

    html = admin_client.get(f"/admin/notifications/notification/{gone.pk}/change/").content.decode()
    assert "channel &#x27;removed-channel&#x27; is not configured in this process" in html
