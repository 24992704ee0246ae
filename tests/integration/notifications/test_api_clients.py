"""API keys and tenants: authentication (401), keys stored hashed, revocation, one client's
notifications invisible to another (404), `manage.py create_api_key`, throttling per client."""

from __future__ import annotations

import io
import uuid

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from notifications.auth import api_key_create, hash_key, key_cache
from notifications.models import ApiClient, ApiKey, Notification
from outbox.models import OutboxEntry
from tests.api_helpers import URL, assert_error, url_of
from tests.helpers import history, make_api_client, row_counts, tenant
from tests.integration.notifications.test_throttling import away_from_a_window_boundary

PAYLOAD = {"channel": "fake", "to": "someone", "message": "hi"}


def bearer(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


@pytest.fixture(autouse=True)
def fresh_key_cache():
    key_cache.clear()
    yield
    key_cache.clear()


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [("post", URL), ("get", URL), ("get", url_of(uuid.uuid4())), ("post", url_of(uuid.uuid4(), "cancel")),
     ("post", url_of(uuid.uuid4(), "resend")), ("post", URL + "/batch"), ("get", "/api/v1/channels")],
)
def test_no_authorization_header_answers_401_with_www_authenticate(db, method, path):
    response = getattr(APIClient(), method)(path, PAYLOAD if method == "post" else None, format="json")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert row_counts() == (0, 0, 0)


@pytest.mark.parametrize(
    "header",
    ["Bearer ntf_this-key-was-never-issued-0123456789", "Bearer", "Bearer a b", "Basic dXNlcjpwYXNz", "Token abc"],
)
def test_a_wrong_key_or_scheme_answers_401(db, header):
    api_key_create(client=tenant())  # some valid key exists; the header's is not it
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=header)
    response = api.post(URL, PAYLOAD, format="json")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert row_counts() == (0, 0, 0)


def test_a_revoked_key_answers_401_at_once_in_this_process(db):
    api_key, key = api_key_create(client=tenant())
    api = bearer(key)
    assert api.post(URL, PAYLOAD, format="json").status_code == 202  # now in the key cache

    # A revocation that bypasses the model's signals (queryset update), then the cache clear
    # that the admin's save triggers.
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    key_cache.clear()

    assert_error(api.post(URL, PAYLOAD, format="json"), 401, "not_authenticated")
    assert_error(api.get(URL), 401, "not_authenticated")
    assert Notification.objects.count() == 1


def test_revoking_by_saving_the_key_clears_the_cache_by_itself(db):
    api_key, key = api_key_create(client=tenant())
    api = bearer(key)
    assert api.get(URL).status_code == 200
    api_key.revoked_at = timezone.now()
    api_key.save()  # as the admin does: post_save clears the key cache
    assert_error(api.get(URL), 401, "not_authenticated")


def test_a_revoked_key_does_not_affect_the_clients_other_keys(db):
    client = tenant()
    revoked, revoked_key = api_key_create(client=client)
    _, other_key = api_key_create(client=client)
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    key_cache.clear()
    assert_error(bearer(revoked_key).get(URL), 401, "not_authenticated")
    assert bearer(other_key).get(URL).status_code == 200


# --- keys are stored hashed -----------------------------------------------------------------


def test_keys_are_stored_hashed_never_in_clear(db):
    api_key, key = api_key_create(client=tenant())
    assert key.startswith("ntf_") and len(key) >= 36
    api_key.refresh_from_db()
    assert api_key.key_hash == hash_key(key) != key
    assert len(api_key.key_hash) == 64
    assert api_key.prefix == key[:12] and api_key.prefix != key
    with connection.cursor() as cursor:
        cursor.execute("SELECT row_to_json(k)::text FROM api_key k")
        rows = [row[0] for row in cursor.fetchall()]
    assert len(rows) == 1
    assert key not in rows[0]
    assert key[12:] not in rows[0]  # not even the part after the displayed prefix


def test_two_keys_are_different(db):
    (_, first), (_, second) = api_key_create(client=tenant()), api_key_create(client=tenant())
    assert first != second
    assert ApiKey.objects.values("key_hash").distinct().count() == 2


# --- tenants ---------------------------------------------------------------------------------


@pytest.fixture
def two_clients(db):
    alice, bob = make_api_client("alice"), make_api_client("bob")
    alice_ids = [alice.post(URL, {**PAYLOAD, "to": f"alice-{i}"}, format="json").json()["id"] for i in range(2)]
    bob_ids = [bob.post(URL, {**PAYLOAD, "to": "bob-0"}, format="json").json()["id"]]
    return alice, bob, alice_ids, bob_ids


def test_notifications_belong_to_the_client_whose_key_created_them(two_clients):
    _, _, alice_ids, bob_ids = two_clients
    assert {str(n.id) for n in Notification.objects.filter(client__name="alice")} == set(alice_ids)
    assert {str(n.id) for n in Notification.objects.filter(client__name="bob")} == set(bob_ids)


def test_a_client_lists_only_its_own_notifications(two_clients):
    alice, bob, alice_ids, bob_ids = two_clients
    assert sorted(item["id"] for item in alice.get(URL).json()["results"]) == sorted(alice_ids)
    assert [item["id"] for item in bob.get(URL).json()["results"]] == bob_ids
    # filters do not leak either
    assert alice.get(URL, {"to": "bob-0"}).json()["results"] == []
    assert len(alice.get(URL, {"status": "queued"}).json()["results"]) == 2


def test_a_client_reads_its_own_notification(two_clients):
    alice, _, alice_ids, _ = two_clients
    response = alice.get(url_of(alice_ids[0]))
    assert response.status_code == 200
    assert response.json()["id"] == alice_ids[0]


@pytest.mark.parametrize("method, action", [("get", ""), ("post", "cancel"), ("post", "resend")])
def test_another_clients_id_answers_404(two_clients, method, action):
    alice, bob, alice_ids, _ = two_clients
    response = getattr(bob, method)(url_of(alice_ids[0], action), format="json")
    error = assert_error(response, 404, "not_found")
    assert alice_ids[0] in error["message"]
    # Exactly as for an id that does not exist at all.
    missing = getattr(bob, method)(url_of(uuid.uuid4(), action), format="json")
    assert_error(missing, 404, "not_found")
    # And nothing happened to alice's notification.
    notification = Notification.objects.get(pk=alice_ids[0])
    assert notification.status == "queued"
    assert [e.status for e in history(notification.pk)] == ["queued"]
    assert OutboxEntry.objects.filter(notification_id=notification.pk).exists()


def test_another_clients_sent_notification_cannot_be_resent(two_clients):
    alice, bob, alice_ids, _ = two_clients
    Notification.objects.filter(pk=alice_ids[0]).update(status="sent")
    OutboxEntry.objects.filter(notification_id=alice_ids[0]).delete()
    assert_error(bob.post(url_of(alice_ids[0], "resend")), 404, "not_found")
    assert Notification.objects.get(pk=alice_ids[0]).status == "sent"
    assert not OutboxEntry.objects.filter(notification_id=alice_ids[0]).exists()


# --- manage.py create_api_key -----------------------------------------------------------------


def create_api_key(*args: str) -> str:
    out = io.StringIO()
    call_command("create_api_key", *args, stdout=out)
    return out.getvalue()


def test_create_api_key_prints_a_key_that_authenticates(db):
    output = create_api_key("billing")
    keys = [word for word in output.split() if word.startswith("ntf_")]
    assert len(keys) == 1, output
    (key,) = keys
    client = ApiClient.objects.get(name="billing")
    assert ApiKey.objects.get(client=client).key_hash == hash_key(key)

    api = bearer(key)
    response = api.post(URL, PAYLOAD, format="json")
    assert response.status_code == 202, response.content
    assert Notification.objects.get().client == client


def test_create_api_key_quiet_prints_only_the_key(db):
    key = create_api_key("billing", "--quiet").strip()
    assert key.startswith("ntf_") and " " not in key
    assert bearer(key).get(URL).status_code == 200


def test_create_api_key_for_an_existing_client_adds_a_key(db):
    first = create_api_key("billing", "--quiet").strip()
    second = create_api_key("billing", "--quiet").strip()
    assert first != second
    assert ApiClient.objects.filter(name="billing").count() == 1
    assert ApiKey.objects.filter(client__name="billing").count() == 2
    assert bearer(first).get(URL).status_code == 200
    assert bearer(second).get(URL).status_code == 200


def test_create_api_key_with_a_given_key(db):
    given = "ntf_" + "k" * 30
    output = create_api_key("dev", "--key", given)
    assert given in output
    assert ApiKey.objects.get(client__name="dev").key_hash == hash_key(given)
    assert bearer(given).post(URL, PAYLOAD, format="json").status_code == 202


def test_create_api_key_with_the_same_key_twice_is_idempotent(db):
    given = "ntf_" + "k" * 30
    create_api_key("dev", "--key", given)
    output = create_api_key("dev", "--key", given)
    assert given in output
    assert ApiClient.objects.filter(name="dev").count() == 1
    assert ApiKey.objects.filter(client__name="dev").count() == 1
    assert bearer(given).get(URL).status_code == 200


def test_create_api_key_with_a_given_key_restores_a_revoked_one(db):
    given = "ntf_" + "k" * 30
    create_api_key("dev", "--key", given)
    ApiKey.objects.update(revoked_at=timezone.now())
    key_cache.clear()
    assert bearer(given).get(URL).status_code == 401
    create_api_key("dev", "--key", given)
    assert ApiKey.objects.get().revoked_at is None
    assert bearer(given).get(URL).status_code == 200


def test_create_api_key_refuses_another_clients_key(db):
    given = "ntf_" + "k" * 30
    create_api_key("dev", "--key", given)
    with pytest.raises(CommandError, match="another client"):
        create_api_key("intruder", "--key", given)
    assert ApiKey.objects.get().client.name == "dev"


@pytest.mark.parametrize("bad", ["short", "xyz_" + "k" * 30, "ntf_" + "k" * 5])
def test_create_api_key_refuses_a_malformed_given_key(db, bad):
    with pytest.raises(CommandError):
        create_api_key("dev", "--key", bad)
    assert ApiKey.objects.count() == 0


# --- throttling ------------------------------------------------------------------------------


@pytest.fixture
def three_per_minute(db):
    """Rate "3/minute" per client, counted in PostgreSQL for the whole fleet
    (notifications.throttling; tests/integration/notifications/test_throttling.py has the rest),
    in fixed minutes: the test starts early in one."""
    rates = {"api_client": "3/minute"}
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}):
        away_from_a_window_boundary(60)
        yield


def test_the_fourth_request_in_a_minute_answers_429_with_retry_after(db, three_per_minute):
    api = make_api_client("alice")
    for _ in range(3):
        assert api.get(URL).status_code == 200
    response = api.post(URL, PAYLOAD, format="json")
    error = assert_error(response, 429, "throttled")
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 60
    assert "throttled" in error["message"].lower() or "available" in error["message"].lower()
    assert Notification.objects.count() == 0  # the throttled POST wrote nothing


def test_throttling_is_per_client(db, three_per_minute):
    alice, bob = make_api_client("alice"), make_api_client("bob")
    for _ in range(3):
        assert alice.get(URL).status_code == 200
    assert alice.get(URL).status_code == 429
    for _ in range(3):
        assert bob.post(URL, PAYLOAD, format="json").status_code == 202
    assert bob.get(URL).status_code == 429


def test_throttling_counts_per_client_not_per_key(db, three_per_minute):
    first = make_api_client("alice")
    second = make_api_client("alice")  # another key of the same client
    for api in (first, first, second):
        assert api.get(URL).status_code == 200
    assert second.get(URL).status_code == 429


def test_requests_without_a_key_answer_401_not_429(db, three_per_minute):
    for _ in range(5):
        assert APIClient().get(URL).status_code == 401
