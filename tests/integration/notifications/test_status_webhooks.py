"""Status webhooks: the endpoints API (POST/GET/DELETE /api/v1/webhook-endpoints), the event
list (GET /api/v1/events), and, end to end through the API under gunicorn and a dispatcher
process, the signed status events a receiver in this process gets
(tests/provider_standins/webhook.py). The trigger that writes the events and queues their
deliveries is tested at the database in tests/integration/outbox/test_receipts_store.py."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone

from channels.registry import STATUS_WEBHOOKS_CHANNEL, get_channel
from notifications.auth import api_key_create
from notifications.models import STATUS_WEBHOOKS_CLIENT_ID as INTERNAL_CLIENT
from notifications.models import Notification, StatusEvent, WebhookEndpoint
from outbox import store
from tests.api_helpers import URL, assert_error, url_of
from tests.helpers import ApiProcess, claim, fast_retries, make_api_client, tenant, wait_until
from tests.provider_standins import Reply
from tests.provider_standins.webhook import Received, Receiver

ENDPOINTS = "/api/v1/webhook-endpoints"
EVENTS = "/api/v1/events"
HOOK = "https://hooks.example.com/notify-status"


@pytest.fixture
def api(db):
    return make_api_client()


def register(api, url: str = HOOK, **fields) -> dict:
    response = api.post(ENDPOINTS, {"url": url, **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def accept(api, **fields) -> str:
    response = api.post(URL, {"channel": "fake", "to": "someone@example.com", "message": "hi", **fields}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def sent(*ids: str) -> None:
    """Record the sends of `ids` as a dispatcher does: claim, START, RECORD 'sent' (one statement)."""
    deliveries = [d for d in claim(channels=("fake",), start=True) if d.notification_id in ids]
    assert len(deliveries) == len(ids)
    outcomes = [store.Outcome(d, "sent", provider_message_id="P-1") for d in deliveries]
    assert store.record_outcomes(outcomes, dispatcher="d1") == len(ids)


def deliveries_to() -> dict[str, int]:
    """How many status-event deliveries are queued per endpoint URL."""
    return dict(Counter(Notification.objects.filter(client_id=INTERNAL_CLIENT).values_list("recipient", flat=True)))


def event_page(api, **params) -> dict:
    response = api.get(EVENTS, params)
    assert response.status_code == 200, response.content
    return response.json()


def event_list(api, **params) -> list[tuple[str, str, int]]:
    """(notification id, type, sequence) of the first page of events."""
    return [(e["notification_id"], e["type"], e["sequence"]) for e in event_page(api, **params)["results"]]


# --- webhook endpoints --------------------------------------------------------------------------


def test_register_shows_the_secret_once_and_subscribes_to_every_type_by_default(api):
    created = register(api)
    assert set(created) == {"id", "url", "event_types", "created_at", "secret"}
    assert created["url"] == HOOK
    assert created["event_types"] == WebhookEndpoint.EVENT_TYPES
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    assert WebhookEndpoint.objects.get(pk=created["id"]).secret == created["secret"]

    detail = api.get(f"{ENDPOINTS}/{created['id']}")
    assert detail.status_code == 200, detail.content
    listed = api.get(ENDPOINTS)
    assert listed.status_code == 200, listed.content
    assert detail.json() == {k: v for k, v in created.items() if k != "secret"}
    assert listed.json() == [detail.json()]
    assert created["secret"] not in (detail.content + listed.content).decode()
    assert register(api)["secret"] != created["secret"]  # each endpoint has its own


def test_register_for_some_event_types(api):
    created = register(api, event_types=["delivered", "failed"])
    assert created["event_types"] == ["delivered", "failed"]


@pytest.mark.parametrize("event_types, field", [(["delivered", "opened"], "event_types[1]"), ([], "event_types"),
                                                 ("failed", "event_types"), (["sending"], "event_types[0]")])
def test_an_unknown_event_type_or_an_empty_list_is_400(api, event_types, field):
    error = assert_error(api.post(ENDPOINTS, {"url": HOOK, "event_types": event_types}, format="json"), 400, "invalid")
    assert list(error["fields"]) == [field], error  # an item named as batch items are: event_types[1]
    if event_types and isinstance(event_types, list):
        assert "Must be one of: accepted, sent," in str(error["fields"]), error
    assert not WebhookEndpoint.objects.exists()


def test_an_unknown_field_is_400(api):
    assert_error(api.post(ENDPOINTS, {"url": HOOK, "secret": "mine"}, format="json"), 400, "invalid", fields=["secret"])


REFUSED_URLS = {
    "loopback": ("http://127.0.0.1/hook", "loopback address"),
    "private": ("http://10.0.0.1/hook", "private address"),
    "localhost": ("http://localhost:8080/hook", "loopback name"),
    "ipv6-loopback": ("http://[::1]/hook", "loopback address"),
    "mapped-private": ("http://[::ffff:192.168.1.1]/hook", "private address"),
    "link-local": ("http://169.254.169.254/latest/meta-data", "link-local address"),
    "ftp": ("ftp://hooks.example.com/hook", "not an http(s) URL"),
    "credentials": ("https://user:pw@hooks.example.com/hook", "user:password"),
    "not-a-url": ("hooks dot example dot com", "not an http(s) URL"),
    "bad-port": ("https://hooks.example.com:99999/hook", "not a valid URL"),
    "too-long": ("https://hooks.example.com/" + "a" * 2048, "no more than 2048 characters"),
}


@pytest.mark.parametrize("url, problem", REFUSED_URLS.values(), ids=REFUSED_URLS.keys())
def test_a_refused_url_is_400_naming_the_problem(api, settings, url, problem):
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    error = assert_error(api.post(ENDPOINTS, {"url": url}, format="json"), 400, "invalid", fields=["url"])
    (message,) = error["fields"]["url"]
    assert problem in message, message
    if "address" in problem or "name" in problem:  # says how a test or an intranet set-up can allow it
        assert "NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS" in message, message
    assert not WebhookEndpoint.objects.exists()


def test_private_targets_are_accepted_when_the_setting_allows_them_but_other_problems_are_not(api, settings):
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    for url in ("http://127.0.0.1:9000/hook", "http://10.0.0.1/hook", "http://localhost/hook"):
        assert register(api, url)["url"] == url
    assert_error(api.post(ENDPOINTS, {"url": "https://user:pw@127.0.0.1/"}, format="json"), 400, fields=["url"])
    assert_error(api.post(ENDPOINTS, {"url": "ftp://127.0.0.1/"}, format="json"), 400, fields=["url"])


def test_the_status_webhooks_channel_follows_the_setting(settings):
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    assert get_channel(STATUS_WEBHOOKS_CHANNEL).allow_private_targets is True
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    assert get_channel(STATUS_WEBHOOKS_CHANNEL).allow_private_targets is False


def test_no_api_request_may_send_on_the_status_webhooks_channel(api):
    response = api.post(URL, {"channel": "status-webhooks", "to": HOOK, "message": "{}"}, format="json")
    assert_error(response, 400, "invalid")
    assert not Notification.objects.exists()


def test_another_clients_endpoint_is_404_and_absent_from_its_list(api):
    created = register(api)
    other = make_api_client("other")
    assert_error(other.get(f"{ENDPOINTS}/{created['id']}"), 404, "not_found")
    assert_error(other.delete(f"{ENDPOINTS}/{created['id']}"), 404, "not_found")
    assert other.get(ENDPOINTS).json() == []
    assert WebhookEndpoint.objects.filter(pk=created["id"]).exists()


def test_delete_stops_queueing_events_for_the_endpoint(api):
    kept, deleted = register(api, "https://a.example.com/hook"), register(api, "https://b.example.com/hook")
    accept(api)
    assert deliveries_to() == {kept["url"]: 1, deleted["url"]: 1}  # "accepted", queued for each

    response = api.delete(f"{ENDPOINTS}/{deleted['id']}")
    assert response.status_code == 204, response.content
    assert_error(api.get(f"{ENDPOINTS}/{deleted['id']}"), 404, "not_found")
    assert_error(api.delete(f"{ENDPOINTS}/{deleted['id']}"), 404, "not_found")
    assert [e["id"] for e in api.get(ENDPOINTS).json()] == [kept["id"]]
    accept(api)
    assert deliveries_to() == {kept["url"]: 2, deleted["url"]: 1}
    assert StatusEvent.objects.count() == 2

    # A client without endpoints: no events at all (it pays nothing for the feature).
    assert api.delete(f"{ENDPOINTS}/{kept['id']}").status_code == 204
    accept(api)
    assert deliveries_to() == {kept["url"]: 2, deleted["url"]: 1}
    assert StatusEvent.objects.count() == 2


def test_an_endpoint_gets_only_the_types_it_subscribed_to_and_every_endpoint_its_own_delivery(api):
    failed_only = register(api, "https://a.example.com/hook", event_types=["failed"])
    everything = register(api, "https://b.example.com/hook")
    nid = accept(api)
    sent(nid)
    deliveries = Notification.objects.filter(client_id=INTERNAL_CLIENT).order_by("created_at")
    assert [(d.recipient, d.subject) for d in deliveries] == [(everything["url"], "accepted"), (everything["url"], "sent")]
    assert {d.metadata["endpoint_id"] for d in deliveries} == {everything["id"]}
    assert all(d.metadata["signing_secret"] == everything["secret"] for d in deliveries)
    assert failed_only["id"] not in {d.metadata["endpoint_id"] for d in deliveries}


# --- the event list -----------------------------------------------------------------------------
# A client has status events once it has a webhook endpoint (of any type).


@pytest.fixture
def subscribed(api):
    """`api`, whose client has a webhook endpoint (for failures only: no delivery is queued)."""
    register(api, event_types=["failed"])
    return api


def test_events_are_the_clients_own_oldest_first(subscribed):
    api = subscribed
    other = make_api_client("other")
    register(other)
    first = accept(api)
    second = accept(api, send_at=(timezone.now() + timedelta(hours=1)).isoformat())
    accept(other)
    sent(first)
    assert api.post(url_of(second, "cancel")).status_code == 200

    body = event_page(api)
    assert body["next"] is None and body["previous"] is None
    assert [(e["notification_id"], e["type"], e["sequence"]) for e in body["results"]] == [
        (first, "accepted", 1), (second, "accepted", 1), (first, "sent", 2), (second, "cancelled", 2)]
    event = body["results"][2]
    assert set(event) == {"id", "type", "sequence", "notification_id", "created_at", "payload"}
    assert event["payload"]["id"] == event["id"]
    assert (event["payload"]["type"], event["payload"]["sequence"]) == ("sent", 2)
    assert event["payload"]["notification"] == {
        "id": first, "channel": "fake", "to": "someone@example.com", "status": "sent", "attempts": 1,
        "error": "", "provider_message_id": "P-1"}
    assert [e["id"] for e in body["results"]] == [
        str(pk) for pk in StatusEvent.objects.filter(client=tenant()).order_by("created_at", "id").values_list("pk", flat=True)]
    assert [e["type"] for e in event_page(other)["results"]] == ["accepted"]


def test_event_filters(subscribed):
    api = subscribed
    first = accept(api)
    second = accept(api)
    sent(first)
    everything = event_page(api)["results"]
    assert event_list(api, type="sent") == [(first, "sent", 2)]
    assert event_list(api, type="failed") == []
    assert event_list(api, notification=second) == [(second, "accepted", 1)]
    assert event_list(api, notification=first, type="accepted") == [(first, "accepted", 1)]
    # `since`: at or after, in any offset
    assert event_list(api, since=everything[1]["created_at"]) == [(second, "accepted", 1), (first, "sent", 2)]
    later = StatusEvent.objects.get(pk=everything[2]["id"]).created_at.astimezone(timezone.get_fixed_timezone(120))
    assert event_list(api, since=later.isoformat()) == [(first, "sent", 2)]
    assert event_list(api, since=(timezone.now() + timedelta(minutes=1)).isoformat()) == []


@pytest.mark.parametrize("params, field", [
    ({"since": "yesterday"}, "since"),
    ({"since": "2030-01-01T09:00:00Z\x00junk"}, "since"),
    ({"type": "opened"}, "type"),
    ({"notification": "not-a-uuid"}, "notification"),
    ({"page_size": "0"}, "page_size"),
    ({"page_size": "501"}, "page_size"),
    ({"cursor": "garbage"}, "cursor"),
    ({"status": "sent"}, "status"),
])
def test_bad_event_query_is_400_naming_the_parameter(api, params, field):
    assert_error(api.get(f"{EVENTS}?{urlencode(params)}"), 400, "invalid", fields=[field])


def test_event_pagination_visits_every_event_once_in_order(subscribed):
    api = subscribed
    ids = [accept(api) for _ in range(3)]
    first = event_page(api, page_size=2)
    second = api.get(first["next"]).json()
    assert [e["notification_id"] for e in first["results"] + second["results"]] == ids
    assert api.get(second["previous"]).json() == first

    sent(*ids)  # three "sent" events of one statement: the same created_at, ordered by id
    expected = [str(pk) for pk in StatusEvent.objects.order_by("created_at", "id").values_list("pk", flat=True)]
    assert len(expected) == 6
    seen, page = [], event_page(api, page_size=4)  # the second page starts inside the tie
    while True:
        seen += [e["id"] for e in page["results"]]
        if page["next"] is None:
            break
        assert len(page["results"]) == 4
        response = api.get(page["next"])
        assert response.status_code == 200, response.content
        page = response.json()
    assert seen == expected


# --- end to end: gunicorn, a dispatcher, and receivers in this process ------------------------------

ALLOW_PRIVATE = {"NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}
CHANNELS = """
[channels.fake]
backend = "channels.backends.fake.FakeChannel"
options = { latency_ms = 0 }

[channels.broken]
backend = "channels.backends.fake.FakeChannel"
options = { permanent_rate = 1.0 }
"""


class Service:
    """The API under gunicorn and one dispatcher process, with private webhook targets allowed,
    and an API key of the client "tests"."""

    def __init__(self, api: ApiProcess, key: str):
        self.api = api
        self.auth = {"Authorization": f"Bearer {key}"}

    def call(self, method: str, path: str, body: dict | None = None, expect: int = 200) -> dict:
        status, _, answer = self.api.request(method, path, body, headers=self.auth)
        assert status == expect, (method, path, status, answer)
        return answer

    def register(self, receiver: Receiver, **fields) -> dict:
        """Register `receiver` as an endpoint; it then checks signatures with the new secret."""
        created = self.call("POST", ENDPOINTS, {"url": receiver.url, **fields}, expect=201)
        receiver.secret = created["secret"]
        return created

    def accept(self, channel: str = "fake", **fields) -> str:
        body = {"channel": channel, "to": "someone@example.com", "message": "hi", **fields}
        return self.call("POST", URL, body, expect=202)["id"]

    def events(self, nid: str) -> list[dict]:
        return self.call("GET", f"{EVENTS}?notification={nid}")["results"]


@pytest.fixture
def service(start_api, start_dispatchers, channels_file) -> Service:
    path = channels_file(CHANNELS)
    env = {**ALLOW_PRIVATE, "NOTIFY_CHANNELS_FILE": str(path)}
    start_dispatchers("--processes", "1", "--threads", "4", env={**env, **fast_retries("0.2", "0.4")})
    api = start_api(workers=1, env=env)
    _, key = api_key_create(client=tenant())
    return Service(api, key)


def deliveries_settled() -> bool:
    """Every queued status event was delivered to its endpoint, or failed."""
    return not Notification.objects.filter(client_id=INTERNAL_CLIENT).exclude(status__in=("sent", "failed")).exists()


def wait_for_deliveries(*receivers: Receiver, count: int) -> None:
    """Wait until the receivers have `count` requests together and no delivery is pending."""
    wait_until(lambda: sum(len(r.received) for r in receivers) >= count and deliveries_settled(), timeout=20,
               message=f"{count} webhook requests")


def by_notification(receiver: Receiver) -> dict[str, list[tuple[str, int]]]:
    """(type, sequence) of the events each notification got, in the order of `sequence`."""
    events: dict[str, list[tuple[str, int]]] = {}
    for event in sorted((r.json() for r in receiver.received), key=lambda e: e["sequence"]):
        events.setdefault(event["notification"]["id"], []).append((event["type"], event["sequence"]))
    return events


def test_a_receiver_gets_signed_accepted_then_sent_events_matching_the_event_list(service):
    with Receiver() as receiver:
        service.register(receiver)
        ids = [service.accept(to=f"user{i}@example.com") for i in range(3)]
        wait_for_deliveries(receiver, count=6)

    assert all(r.signature_valid for r in receiver.received), [r.headers for r in receiver.received]
    assert {r.path for r in receiver.received} == {"/hook"}
    assert by_notification(receiver) == {nid: [("accepted", 1), ("sent", 2)] for nid in ids}
    for request in receiver.received:
        assert request.headers["x-notify-event-id"] == request.json()["id"]
        assert request.headers["content-type"].startswith("application/json")
    received = {r.json()["id"]: r.json() for r in receiver.received}
    assert len(received) == 6  # each event once: the receiver answered 200 to all
    for nid in ids:
        listed = service.events(nid)
        assert [(e["type"], e["sequence"]) for e in listed] == [("accepted", 1), ("sent", 2)]
        for event in listed:
            assert received[event["id"]] == event["payload"]  # the body is the event, as listed
        assert received[listed[1]["id"]]["notification"]["status"] == "sent"
        assert received[listed[1]["id"]]["notification"]["provider_message_id"].startswith("fake-")


def test_an_event_the_receiver_refused_with_a_500_comes_again_with_the_same_event_id(service):
    seen: set[str] = set()

    def respond(received: Received) -> Reply:
        event_id = received.headers["x-notify-event-id"]
        if event_id not in seen:
            seen.add(event_id)
            return Reply(500, {"error": "try later"})
        return Reply(200, {"id": f"rcv-{event_id}"})

    with Receiver(respond) as receiver:
        service.register(receiver)
        nid = service.accept()
        wait_for_deliveries(receiver, count=4)

    assert all(r.signature_valid for r in receiver.received)
    event_ids = [r.headers["x-notify-event-id"] for r in receiver.received]
    assert len(event_ids) == 4 and len(set(event_ids)) == 2  # each event twice: at least once, de-duplicable
    assert {r.json()["id"]: r.json()["type"] for r in receiver.received} == {
        e["id"]: e["type"] for e in service.events(nid)}
    for event_id in set(event_ids):
        first, again = [r for r in receiver.received if r.headers["x-notify-event-id"] == event_id]
        assert first.body == again.body  # the same event, byte for byte (signed afresh)
    deliveries = Notification.objects.filter(client_id=INTERNAL_CLIENT)
    assert [(d.status, d.attempts) for d in deliveries] == [("sent", 2), ("sent", 2)]
    assert all(d.provider_message_id == f"rcv-{d.metadata['event_id']}" for d in deliveries)


def test_cancelled_and_failed_notifications_and_an_endpoint_for_failures_only(service):
    with Receiver() as everything, Receiver() as failures:
        service.register(everything)
        service.register(failures, event_types=["failed"])
        later = (timezone.now() + timedelta(hours=1)).isoformat()
        scheduled = service.accept(send_at=later)
        service.call("POST", url_of(scheduled, "cancel"))
        doomed = service.accept(channel="broken")
        fine = service.accept()
        wait_for_deliveries(everything, failures, count=7)

    assert all(r.signature_valid for r in everything.received + failures.received)
    assert by_notification(everything) == {
        scheduled: [("accepted", 1), ("cancelled", 2)],
        doomed: [("accepted", 1), ("failed", 2)],
        fine: [("accepted", 1), ("sent", 2)],
    }
    assert by_notification(failures) == {doomed: [("failed", 2)]}
    (failed,) = [r.json() for r in failures.received]
    assert failed["notification"]["status"] == "failed"
    assert "fake permanent failure" in failed["notification"]["error"]
    assert failed["id"] == service.events(doomed)[1]["id"]
    assert [e["payload"]["notification"]["status"] for e in service.events(scheduled)] == ["scheduled", "cancelled"]
    # Each endpoint signs with its own secret: the receivers checked each with theirs.
    assert everything.secret != failures.secret
    assert json.loads(Notification.objects.filter(client_id=INTERNAL_CLIENT, subject="failed",
                                                  recipient=failures.url).get().message) == failed
