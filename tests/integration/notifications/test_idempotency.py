"""Idempotency-Key on POST: a retry returns the original notification(s), a reuse with another
body answers 422, keys are per client and expire; and the unique constraint holds when
identical requests race on several real API processes (gunicorn) against the real database."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from notifications.auth import api_key_create
from notifications.models import IdempotencyKey, Notification
from outbox.models import OutboxEntry
from tests.api_helpers import BATCH_URL, URL, assert_error, url_of
from tests.helpers import ApiProcess, make_api_client, row_counts, tenant

PAYLOAD = {"channel": "fake", "to": "someone", "message": "hi"}


def post(api, payload, key: str | None = "key-1", url: str = URL):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return api.post(url, payload, format="json", **headers)


@pytest.fixture
def api(db):
    return make_api_client("alice")


# --- retries -------------------------------------------------------------------------------


def test_same_key_and_body_returns_the_original_notification(api):
    first = post(api, PAYLOAD)
    assert first.status_code == 202, first.content
    assert "Idempotent-Replayed" not in first

    again = post(api, PAYLOAD)
    assert again.status_code == 202, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again["Location"] == first["Location"]
    assert {k: v for k, v in again.json().items() if k != "updated_at"} == {
        k: v for k, v in first.json().items() if k != "updated_at"
    }
    assert row_counts() == (1, 1, 1)  # one notification, one 'queued' event, one outbox row
    assert IdempotencyKey.objects.count() == 1


def test_replay_ignores_key_order_and_whitespace_of_the_json_body(api):
    first = post(api, {"channel": "fake", "to": "someone", "message": "hi", "metadata": {"a": 1, "b": 2}})
    raw = '{ "metadata": {"b": 2, "a": 1},\n "message": "hi", "to": "someone", "channel": "fake" }'
    again = api.post(URL, raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert row_counts() == (1, 1, 1)


def test_replay_returns_the_notification_as_it_is_now(api):
    first = post(api, PAYLOAD).json()
    assert api.post(url_of(first["id"], "cancel")).status_code == 200
    again = post(api, PAYLOAD)
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first["id"] and again.json()["status"] == "cancelled"
    assert OutboxEntry.objects.count() == 0  # the retry did not queue it again


def test_without_a_key_each_post_creates_a_notification(api):
    ids = {post(api, PAYLOAD, key=None).json()["id"] for _ in range(2)}
    assert len(ids) == 2
    assert row_counts() == (2, 2, 2)
    assert IdempotencyKey.objects.count() == 0


def test_different_keys_create_different_notifications(api):
    assert post(api, PAYLOAD, key="a").json()["id"] != post(api, PAYLOAD, key="b").json()["id"]
    assert row_counts() == (2, 2, 2)


# --- reuse with another body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [{"to": "someone-else"}, {"message": "hello"}, {"metadata": {"k": 1}}, {"priority": "high"}],
)
def test_same_key_with_a_different_body_answers_422_and_writes_nothing(api, changed):
    first = post(api, PAYLOAD)
    stored_before = IdempotencyKey.objects.values().get()

    response = post(api, {**PAYLOAD, **changed})
    error = assert_error(response, 422, "idempotency_key_reused")
    assert "Idempotency-Key" in error["message"]
    assert "Idempotent-Replayed" not in response
    assert row_counts() == (1, 1, 1)
    assert IdempotencyKey.objects.values().get() == stored_before
    assert str(Notification.objects.get().id) == first.json()["id"]


def test_same_key_on_the_other_endpoint_is_a_different_request(api):
    post(api, PAYLOAD)
    response = post(api, {"notifications": [PAYLOAD]}, url=BATCH_URL)
    assert_error(response, 422, "idempotency_key_reused")
    assert row_counts() == (1, 1, 1)


def test_an_invalid_request_does_not_take_the_key(api):
    assert_error(post(api, {**PAYLOAD, "channel": "pigeon"}), 400, "invalid", fields=["channel"])
    assert IdempotencyKey.objects.count() == 0
    response = post(api, PAYLOAD)  # the same key, now with a valid body
    assert response.status_code == 202 and "Idempotent-Replayed" not in response
    assert row_counts() == (1, 1, 1)


@pytest.mark.parametrize("key", ["", "   ", "k" * 256])
def test_a_blank_or_too_long_key_answers_400(api, key):
    assert_error(post(api, PAYLOAD, key=key), 400, "invalid", fields=["Idempotency-Key"])
    assert row_counts() == (0, 0, 0)


def test_a_key_of_255_characters_is_accepted(api):
    key = "k" * 255
    first = post(api, PAYLOAD, key=key)
    assert first.status_code == 202
    assert post(api, PAYLOAD, key=key).json()["id"] == first.json()["id"]


# --- scope and lifetime ---------------------------------------------------------------------------


def test_keys_are_scoped_per_client(db):
    alice, bob = make_api_client("alice"), make_api_client("bob")
    a = post(alice, PAYLOAD)
    b = post(bob, PAYLOAD)
    assert a.status_code == b.status_code == 202
    assert "Idempotent-Replayed" not in b
    assert a.json()["id"] != b.json()["id"]
    assert Notification.objects.get(pk=a.json()["id"]).client.name == "alice"
    assert Notification.objects.get(pk=b.json()["id"]).client.name == "bob"
    assert row_counts() == (2, 2, 2)
    # each client's retry still finds its own
    assert post(bob, PAYLOAD).json()["id"] == b.json()["id"]
    # and bob's different body under the same key does not collide with alice's
    assert post(bob, {**PAYLOAD, "to": "x"}).status_code == 422


def test_a_key_is_kept_for_the_configured_time(api):
    with override_settings(NOTIFY_IDEMPOTENCY_TTL_SECONDS=90):
        post(api, PAYLOAD)
    stored = IdempotencyKey.objects.get()
    assert stored.expires_at - stored.created_at == timedelta(seconds=90)
    assert stored.client == tenant("alice")
    assert stored.key == "key-1"


def test_the_default_lifetime_is_24_hours(api):
    post(api, PAYLOAD)
    stored = IdempotencyKey.objects.get()
    assert stored.expires_at - stored.created_at == timedelta(hours=24)


def test_an_expired_key_is_usable_again(api):
    first = post(api, PAYLOAD).json()["id"]
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    again = post(api, PAYLOAD)
    assert again.status_code == 202 and "Idempotent-Replayed" not in again
    second = again.json()["id"]
    assert second != first
    assert row_counts() == (2, 2, 2)
    stored = IdempotencyKey.objects.get()  # the key now names the new request's notification
    assert [str(i) for i in stored.notification_ids] == [second]
    assert stored.expires_at > timezone.now()
    # ... and replays it from now on
    assert post(api, PAYLOAD).json()["id"] == second


def test_an_expired_key_is_usable_again_with_another_body(api):
    post(api, PAYLOAD)
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = post(api, {**PAYLOAD, "to": "new"})
    assert response.status_code == 202
    assert row_counts() == (2, 2, 2)


# --- batches ---------------------------------------------------------------------------------------


def test_a_batch_with_a_key_replays_the_same_ids(api):
    batch = {"notifications": [{**PAYLOAD, "to": f"user-{i}"} for i in range(3)]}
    first = post(api, batch, url=BATCH_URL)
    assert first.status_code == 202, first.content
    assert "Idempotent-Replayed" not in first

    again = post(api, batch, url=BATCH_URL)
    assert again.status_code == 202
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the same ids, in the same order
    assert row_counts() == (3, 3, 3)

    changed = post(api, {"notifications": batch["notifications"][:2]}, url=BATCH_URL)
    assert_error(changed, 422, "idempotency_key_reused")
    assert row_counts() == (3, 3, 3)


# --- real concurrency: several API processes, one database ----------------------------------------


@pytest.fixture
def live_api(start_api) -> ApiProcess:
    """The API under gunicorn with 4 worker processes, on the test database."""
    return start_api(workers=4, args=("--timeout", "30", "--graceful-timeout", "5"))


def fire_at_once(live: ApiProcess, requests: list[tuple[dict, dict]]) -> list[tuple[int, dict, dict]]:
    """Send every (body, headers) POST from its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(requests))
    results: list = [None] * len(requests)

    def send(index: int, body: dict, headers: dict) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = live.request("POST", URL, body, headers)
        except BaseException as exc:  # reported below
            results[index] = exc

    threads = [threading.Thread(target=send, args=(i, body, headers)) for i, (body, headers) in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request did not finish"
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


def warm_up(live: ApiProcess, key: str) -> None:
    """Give every worker its database connection and the key in its cache before the race, so
    that the requests really arrive at the database together."""
    auth = {"Authorization": f"Bearer {key}"}
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def get() -> None:
        barrier.wait(timeout=10)
        statuses.append(live.request("GET", "/api/v1/channels", headers=auth)[0])

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == [200] * 8, statuses


def api_connections() -> int:
    """Database connections that gunicorn's workers hold (they keep them: CONN_MAX_AGE=None)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_identical_requests_racing_on_four_api_processes_create_one_notification(live_api):
    _, key = api_key_create(client=tenant("racer"))
    warm_up(live_api, key)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "race-1"}

    results = fire_at_once(live_api, [(PAYLOAD, headers)] * 20)

    assert [status for status, _, _ in results] == [202] * 20, [(s, b) for s, _, b in results]
    ids = {body["id"] for _, _, body in results}
    assert len(ids) == 1, ids
    (nid,) = ids
    replayed = [h.get("Idempotent-Replayed") for _, h, _ in results]
    assert replayed.count(None) == 1 and replayed.count("true") == 19  # one created, 19 replays
    assert Notification.objects.filter(client__name="racer").count() == 1
    assert str(Notification.objects.get().pk) == nid
    assert OutboxEntry.objects.filter(notification_id=nid).count() == 1
    assert row_counts() == (1, 1, 1)
    assert IdempotencyKey.objects.count() == 1
    assert api_connections() >= 2  # several worker processes served it
    assert "Traceback" not in live_api.log()


def test_two_bodies_racing_on_one_key_exactly_one_wins(live_api):
    _, key = api_key_create(client=tenant("racer"))
    warm_up(live_api, key)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "race-2"}
    body_a, body_b = {**PAYLOAD, "to": "a"}, {**PAYLOAD, "to": "b"}
    requests = [(body_a if i % 2 else body_b, headers) for i in range(20)]

    results = fire_at_once(live_api, requests)

    by_body = {"a": [], "b": []}
    for (body, _), result in zip(requests, results):
        by_body[body["to"]].append(result)
    winners = [to for to, answers in by_body.items() if all(status == 202 for status, _, _ in answers)]
    assert len(winners) == 1, {to: [s for s, _, _ in answers] for to, answers in by_body.items()}
    (winner,) = winners
    loser = "b" if winner == "a" else "a"
    assert len({body["id"] for _, _, body in by_body[winner]}) == 1
    for status, _, body in by_body[loser]:
        assert status == 422, body
        assert body["error"]["code"] == "idempotency_key_reused"
    (notification,) = Notification.objects.all()
    assert notification.recipient == winner
    assert str(notification.pk) == by_body[winner][0][2]["id"]
    assert row_counts() == (1, 1, 1)
    assert IdempotencyKey.objects.count() == 1
