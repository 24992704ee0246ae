"""GET /api/v1/notifications/<id>, GET /api/v1/notifications, GET /api/v1/channels."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta, timezone
from urllib import parse

import pytest

from notifications import services
from notifications.models import Notification, NotificationEvent
from tests.api_helpers import URL, assert_error
from tests.helpers import make_api_client, tenant

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def client(db):
    return make_api_client()


def create(channel="fake", to="someone", message="hi", **fields) -> Notification:
    new = services.notification_validate(channel=channel, to=to, message=message, **fields)
    (written,), _ = services.notifications_create(client=tenant(), notifications=[new])
    notification = Notification.objects.get(pk=written.id)
    return notification


def set_created_at(notification: Notification, when: datetime) -> None:
    Notification.objects.filter(pk=notification.pk).update(created_at=when, updated_at=when)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


# --- one notification -------------------------------------------------------------------------


def test_detail_of_a_posted_notification(client, db):
    posted = client.post(URL, {"type": "sms-log", "to": "+1 415 555 0100", "message": "code 1234", "metadata": {"k": "v"}}, format="json")
    assert posted.status_code == 202

    response = client.get(posted["Location"])
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == posted.json()["id"]
    assert body["status"] == "queued"
    assert body["channel"] == "sms-log"
    assert body["to"] == "+14155550100"
    assert body["message"] == "code 1234"
    assert body["metadata"] == {"k": "v"}
    assert body["created_at"] == posted.json()["created_at"]
    assert len(body["events"]) == 1
    event = body["events"][0]
    assert {"status", "at", "attempt", "error", "provider_message_id", "dispatcher"} <= set(event)
    assert event["status"] == "queued"
    assert event["attempt"] == 0
    assert event["error"] == ""
    assert event["provider_message_id"] == ""
    assert event["dispatcher"] == ""
    assert event["at"] == body["created_at"]


def test_detail_shows_the_whole_history_in_order(client, db):
    notification = create()
    NotificationEvent.objects.create(
        notification_id=notification.id, status="retrying", attempt=1, error="timeout", dispatcher="host-1:1",
        next_attempt_at=T0,
    )
    NotificationEvent.objects.create(
        notification_id=notification.id, status="sent", attempt=2, provider_message_id="prov-42", dispatcher="host-2:7",
    )
    Notification.objects.filter(pk=notification.pk).update(
        status="sent", attempts=2, provider_message_id="prov-42", sent_at=T0,
    )

    body = client.get(f"{URL}/{notification.id}").json()
    assert body["status"] == "sent"
    assert body["attempts"] == 2
    assert body["provider_message_id"] == "prov-42"
    assert body["sent_at"] is not None
    assert [(e["status"], e["attempt"]) for e in body["events"]] == [("queued", 0), ("retrying", 1), ("sent", 2)]
    retrying, sent = body["events"][1], body["events"][2]
    assert (retrying["error"], retrying["dispatcher"]) == ("timeout", "host-1:1")
    assert retrying["next_attempt_at"] is not None
    assert (sent["provider_message_id"], sent["dispatcher"]) == ("prov-42", "host-2:7")


def test_detail_with_trailing_slash(client, db):
    notification = create()
    response = client.get(f"{URL}/{notification.id}/")
    assert response.status_code == 200
    assert response.json()["id"] == str(notification.id)


def test_detail_of_an_unknown_id_is_404(client, db):
    missing = uuid.uuid4()
    error = assert_error(client.get(f"{URL}/{missing}"), 404, "not_found")
    assert str(missing) in error["message"]


def test_detail_of_a_malformed_id_is_404(client, db):
    assert_error(client.get(f"{URL}/not-a-uuid"), 404, "not_found")


# --- the list ---------------------------------------------------------------------------------


def test_list_is_newest_first(client, db):
    created = [create(to=f"r{i}") for i in range(4)]
    # Distinct creation times, deliberately not in insertion order.
    for notification, minutes in zip(created, [2, 0, 3, 1]):
        set_created_at(notification, T0 + timedelta(minutes=minutes))

    response = client.get(URL)
    body = response.json()
    assert set(body) >= {"next", "previous", "results"}
    assert ids(response) == [str(created[i].id) for i in (2, 0, 3, 1)]
    assert body["next"] is None
    assert {"id", "status", "channel", "to", "created_at"} <= set(body["results"][0])
    assert "events" not in body["results"][0]


def test_list_is_empty(client, db):
    response = client.get(URL)
    assert response.status_code == 200
    assert response.json()["results"] == []


def test_list_filters(client, db):
    email = create(channel="email-log", to="alice@example.com")
    sms_sent = create(channel="sms-log", to="+14155550100")
    sms_failed = create(channel="sms-log", to="+14155550101")
    fake = create(channel="fake", to="alice@example.com")
    Notification.objects.filter(pk=sms_sent.pk).update(status="sent")
    Notification.objects.filter(pk=sms_failed.pk).update(status="failed", last_error="invalid number")

    assert set(ids(client.get(URL, {"status": "queued"}))) == {str(email.id), str(fake.id)}
    assert ids(client.get(URL, {"status": "sent"})) == [str(sms_sent.id)]
    failed = client.get(URL, {"status": "failed"})
    assert ids(failed) == [str(sms_failed.id)]
    assert failed.json()["results"][0]["last_error"] == "invalid number"
    assert ids(client.get(URL, {"status": "retrying"})) == []
    assert set(ids(client.get(URL, {"channel": "sms-log"}))) == {str(sms_sent.id), str(sms_failed.id)}
    assert set(ids(client.get(URL, {"to": "alice@example.com"}))) == {str(email.id), str(fake.id)}
    assert ids(client.get(URL, {"to": "+14155550100"})) == [str(sms_sent.id)]
    # Filters combine.
    assert ids(client.get(URL, {"to": "alice@example.com", "channel": "fake"})) == [str(fake.id)]
    assert ids(client.get(URL, {"channel": "sms-log", "status": "queued"})) == []


def test_list_invalid_status_is_400(client, db):
    error = assert_error(client.get(URL, {"status": "arrived"}), 400, "invalid", fields=["status"])
    assert "queued" in error["message"]


@pytest.mark.parametrize("param", ["recipient", "type", "limit"])
def test_list_unknown_query_parameter_is_400(client, db, param):
    assert_error(client.get(URL, {param: "x"}), 400, "invalid", fields=[param])


def test_list_with_an_invalid_cursor_answers_in_the_error_format(client, db):
    create()
    assert_error(client.get(URL, {"cursor": "garbage"}), 400, "invalid", fields=["cursor"])


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


HOSTILE_CURSORS = {
    "position not a datetime": b64("p=garbage"),
    "position with a NUL": b64("p=\x00"),
    "position with an encoded NUL": b64("p=%00"),
    "position with an encoded lone surrogate": b64("p=%ED%A0%80"),
    "position with non-ASCII digits": b64("p=%D9%A2025-01-01+12%3A00%3A00%2B00%3A00"),
    "naive position": b64("p=2025-01-01 12:00:00"),
    "date only": b64("p=2025-01-01"),
    "impossible date": b64("p=2025-13-01 12:00:00+00:00"),
    "offset of a day or more": b64("p=2025-01-01 12:00:00+99:00"),
    "before year 1 in UTC": b64("p=0001-01-01 00:00:00+01:00"),
    "after year 9999 in UTC": b64("p=9999-12-31 23:59:59-01:00"),
    "very long position": b64("p=" + "9" * 100_000),
    "huge offset": b64("o=99999999"),
    "offset over the cutoff": b64("o=1001"),
    "offset with thousands of digits": b64("o=" + "1" * 5000),
    "negative offset": b64("o=-1"),
    "offset not a number": b64("o=x"),
    "direction 2": b64("r=2"),
    "direction not a number": b64("r=yes"),
    "repeated part": b64("p=2025-01-01 12:00:00+00:00&p=2025-01-02 12:00:00+00:00"),
    "unknown part": b64("x=1"),
    "not a query string": b64("garbage"),
    "binary": b64(b"\xff\xfe\x00\x80p=\x00"),
    "not base64": "!!!not base64!!!",
    "bad padding": "cD1nYXJiYWdl===",
    "not ASCII": "cD1nYXJiYWdl\u00e9",
    "lone surrogate": "\ud800",
    "NUL": "\x00",
    "very long": "A" * 200_000,
}


@pytest.mark.parametrize("cursor", HOSTILE_CURSORS.values(), ids=HOSTILE_CURSORS.keys())
def test_list_with_a_hostile_cursor_is_400_naming_cursor(client, db, cursor):
    create()
    # Percent-encoded by hand: the test client cannot encode a lone surrogate.
    query = parse.quote(cursor, safe="", errors="surrogatepass")
    assert_error(client.get(f"{URL}?cursor={query}"), 400, "invalid", fields=["cursor"])


def test_list_accepts_the_cursors_drf_writes(client, db):
    created = [create(to=f"r{i}") for i in range(3)]
    for i, notification in enumerate(created):
        set_created_at(notification, T0 + timedelta(seconds=i))
    newest, middle, oldest = (str(n.id) for n in reversed(created))

    assert ids(client.get(URL, {"cursor": b64("o=0")})) == [newest, middle, oldest]
    assert ids(client.get(URL, {"cursor": b64("o=1000")})) == []
    assert ids(client.get(URL, {"cursor": b64("o=1&r=0")})) == [middle, oldest]
    # Positions as DRF writes created_at (str, then urlencode), or in any other aware ISO form.
    assert ids(client.get(URL, {"cursor": b64(parse.urlencode({"p": T0 + timedelta(seconds=2)}))})) == [middle, oldest]
    assert ids(client.get(URL, {"cursor": b64(parse.urlencode({"p": "2025-01-01T13:00:01+01:00"}))})) == [oldest]
    assert ids(client.get(URL, {"cursor": b64("r=1&p=2025-01-01T12:00:00Z")})) == [newest, middle]


def test_previous_links_lead_back_to_the_first_page(client, db):
    created = [create(to=f"r{i}") for i in range(5)]
    for i, notification in enumerate(created):
        set_created_at(notification, T0 + timedelta(seconds=i))
    first = client.get(URL, {"page_size": 2})
    second = client.get(first.json()["next"])
    back = client.get(second.json()["previous"])
    assert ids(back) == ids(first)


def walk(client, params) -> list[str]:
    """Follow the `next` links from the first page; every id seen, in order."""
    seen: list[str] = []
    response = client.get(URL, params)
    pages = 0
    while True:
        pages += 1
        assert pages <= 10, "pagination does not end"
        page_ids = ids(response)
        assert len(page_ids) <= params["page_size"]
        seen += page_ids
        next_link = response.json()["next"]
        if next_link is None:
            return seen
        response = client.get(next_link)


def test_cursor_pagination_visits_every_row_once(client, db):
    created = [create(to=f"r{i}") for i in range(5)]
    for i, notification in enumerate(created):
        set_created_at(notification, T0 + timedelta(seconds=i))

    seen = walk(client, {"page_size": 2})
    assert seen == [str(n.id) for n in reversed(created)]


def test_cursor_pagination_with_equal_timestamps_visits_every_row_once(client, db):
    # Rows written in one transaction (or in the same microsecond) share created_at.
    created = [create(to=f"r{i}") for i in range(5)]
    for notification, seconds in zip(created, [0, 1, 1, 1, 2]):
        set_created_at(notification, T0 + timedelta(seconds=seconds))

    seen = walk(client, {"page_size": 2})
    assert sorted(seen) == sorted(str(n.id) for n in created)
    assert len(seen) == 5
    assert seen[0] == str(created[4].id)
    assert seen[-1] == str(created[0].id)


def test_cursor_pagination_keeps_the_filters(client, db):
    wanted = [create(channel="fake", to=f"r{i}") for i in range(3)]
    create(channel="email-log", to="alice@example.com")
    for i, notification in enumerate(wanted):
        set_created_at(notification, T0 + timedelta(seconds=i))

    seen = walk(client, {"page_size": 1, "channel": "fake"})
    assert seen == [str(n.id) for n in reversed(wanted)]


# --- channels ---------------------------------------------------------------------------------


def test_channels_lists_the_configured_channels(client, db):
    response = client.get("/api/v1/channels")
    assert response.status_code == 200
    channels = {c["name"]: c for c in response.json()["channels"]}
    # status-webhooks: always there, delivering the clients' status events
    assert set(channels) == {"email-log", "sms-log", "slack-log", "fake", "status-webhooks"}
    assert {name: c["kind"] for name, c in channels.items()} == {
        "email-log": "email", "sms-log": "sms", "slack-log": "slack", "fake": "fake",
        "status-webhooks": "status-webhook",
    }
    assert channels["fake"]["backend"] == "channels.backends.fake.FakeChannel"
    assert channels["sms-log"]["limits"] == {"message_max_chars": 1600}
    assert client.get("/api/v1/channels/").status_code == 200
