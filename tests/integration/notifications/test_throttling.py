"""The rate limit per API client (NOTIFY_THROTTLE_RATE), counted in PostgreSQL for the whole
fleet (notifications.throttling, outbox/sql.py RATE_TAKE and ENQUEUE_COUNTED): a batch counts
as its number of notifications, a refused request writes nothing and answers 429 with
Retry-After, a steady-state POST stays one statement, and two API processes (gunicorn) share
one limit. The basics (GETs and POSTs share it, per client, not per key) are in
test_api_clients.py."""

from __future__ import annotations

import threading
import time

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from notifications import housekeeping
from notifications.auth import api_key_create
from notifications.models import ApiRateCounter, IdempotencyKey, Notification
from notifications.throttling import configured_rate, parse_rate
from outbox import sql, store
from tests.api_helpers import BATCH_URL, URL, assert_error
from tests.helpers import make_api_client, row_counts, tenant

PAYLOAD = {"channel": "fake", "to": "someone", "message": "hi"}


def batch_of(n: int) -> dict:
    return {"notifications": [{"channel": "fake", "to": f"user{i}", "message": f"m{i}"} for i in range(n)]}


def away_from_a_window_boundary(period: int) -> None:
    """Fixed windows are aligned to the epoch on the database's clock: a test that counts
    within one window starts early in it, not a second before it ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM statement_timestamp())")
        into = float(cursor.fetchone()[0]) % period
    if into > period - 8:
        time.sleep(period - into + 0.2)


@pytest.fixture
def rate(db):
    """Set NOTIFY_THROTTLE_RATE for the test (with NOTIFY_THROTTLE_SHARDS, optionally)."""
    overrides = []

    def use(text: str | None, shards: int = 8) -> None:
        override = override_settings(
            REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"api_client": text}},
            NOTIFY_THROTTLE_SHARDS=shards)
        override.enable()
        overrides.append(override)
        if text is not None:
            away_from_a_window_boundary(parse_rate(text).period)

    yield use
    for override in reversed(overrides):
        override.disable()


def used(client_name: str = "tests") -> int:
    """What the client has used of the current window, all shards together."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(used), 0) FROM api_rate_counter WHERE client_id = %s AND window_start = "
            "to_timestamp(floor(extract(epoch FROM statement_timestamp()) / period) * period)", [tenant(client_name).pk])
        return cursor.fetchone()[0]


def test_over_the_limit_a_post_answers_429_with_retry_after_and_writes_nothing(rate):
    rate("3/minute")
    api = make_api_client()
    for _ in range(3):
        assert api.post(URL, PAYLOAD, format="json").status_code == 202
    before = row_counts()

    response = api.post(URL, PAYLOAD, format="json")
    error = assert_error(response, 429, "throttled")
    assert error["message"].startswith("Request was throttled. Expected available in ")
    retry_after = int(response["Retry-After"])
    with connection.cursor() as cursor:  # the seconds left in the database's current minute
        cursor.execute("SELECT 60 - extract(epoch FROM statement_timestamp())::numeric % 60")
        left = float(cursor.fetchone()[0])
    assert 0 < retry_after <= 60 and abs(retry_after - left) <= 2, (retry_after, left)
    assert row_counts() == before == (3, 3, 3)
    assert used() == 3  # the refused request counted nothing


def test_a_batch_counts_as_its_number_of_notifications(rate):
    rate("5/minute")
    api = make_api_client()
    assert api.post(BATCH_URL, batch_of(3), format="json").status_code == 202
    assert used() == 3
    assert_error(api.post(BATCH_URL, batch_of(3), format="json"), 429, "throttled")  # 3 + 3 > 5: none of them
    assert row_counts() == (3, 3, 3)
    assert api.post(BATCH_URL, batch_of(2), format="json").status_code == 202  # exactly 5
    assert_error(api.post(URL, PAYLOAD, format="json"), 429, "throttled")
    assert_error(api.get(URL), 429, "throttled")  # other requests share the limit
    assert Notification.objects.count() == 5 and used() == 5


def test_a_batch_larger_than_the_whole_limit_is_a_clear_400_not_a_429_to_retry_for_ever(rate):
    rate("5/minute")
    api = make_api_client()
    error = assert_error(api.post(BATCH_URL, batch_of(6), format="json"), 400, "invalid", fields=["notifications"])
    assert "split it" in error["fields"]["notifications"][0]
    assert row_counts() == (0, 0, 0) and used() == 0
    assert api.post(BATCH_URL, batch_of(5), format="json").status_code == 202


def test_a_bad_request_counts_nothing(rate):
    rate("2/minute")
    api = make_api_client()
    for _ in range(5):
        assert_error(api.post(URL, {"channel": "fake", "to": "x"}, format="json"), 400, "invalid")
    assert used() == 0
    assert api.post(URL, PAYLOAD, format="json").status_code == 202


def test_a_throttled_request_with_an_idempotency_key_leaves_the_key_free(rate):
    rate("1/minute")
    api = make_api_client()
    assert api.post(URL, PAYLOAD, format="json").status_code == 202
    headers = {"HTTP_IDEMPOTENCY_KEY": "order-7"}
    assert_error(api.post(URL, {**PAYLOAD, "message": "again"}, format="json", **headers), 429, "throttled")
    assert not IdempotencyKey.objects.exists() and Notification.objects.count() == 1

    with connection.cursor() as cursor:  # the window has passed
        cursor.execute("UPDATE api_rate_counter SET window_start = window_start - interval '1 minute'")
    retried = api.post(URL, {**PAYLOAD, "message": "again"}, format="json", **headers)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried
    replay = api.post(URL, {**PAYLOAD, "message": "again"}, format="json", **headers)
    assert replay["Idempotent-Replayed"] == "true" and replay.json()["id"] == retried.json()["id"]
    assert Notification.objects.count() == 2


def test_the_next_window_counts_from_zero_in_the_same_rows(rate):
    rate("2/minute", shards=1)
    api = make_api_client()
    for _ in range(2):
        assert api.post(URL, PAYLOAD, format="json").status_code == 202
    assert_error(api.post(URL, PAYLOAD, format="json"), 429)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE api_rate_counter SET window_start = window_start - interval '1 minute'")
    assert api.post(URL, PAYLOAD, format="json").status_code == 202
    assert used() == 1 and ApiRateCounter.objects.count() == 1  # the row was reused, not added


def test_clients_have_limits_of_their_own(rate):
    rate("2/minute")
    alice, bob = make_api_client("alice"), make_api_client("bob")
    for _ in range(2):
        assert alice.post(URL, PAYLOAD, format="json").status_code == 202
    assert_error(alice.post(URL, PAYLOAD, format="json"), 429)
    assert bob.post(BATCH_URL, batch_of(2), format="json").status_code == 202
    assert used("alice") == 2 and used("bob") == 2


def test_a_steady_state_post_is_one_statement_the_enqueue_that_counts(rate):
    rate("1000/minute")
    api = make_api_client()
    assert api.post(URL, PAYLOAD, format="json").status_code == 202  # authenticates: its key is cached now
    with CaptureQueriesContext(connection) as queries:
        assert api.post(URL, PAYLOAD, format="json").status_code == 202
    assert len(queries.captured_queries) == 1
    statement = queries.captured_queries[0]["sql"]
    assert "INSERT INTO api_rate_counter" in statement and "INSERT INTO notification " in statement
    with CaptureQueriesContext(connection) as queries:
        assert api.post(BATCH_URL, batch_of(10), format="json").status_code == 202
    assert len(queries.captured_queries) == 1
    assert used() == 12


def test_with_the_limit_off_nothing_is_counted(rate):
    rate(None)
    assert configured_rate() is None
    api = make_api_client()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            assert api.post(URL, PAYLOAD, format="json").status_code == 202
        assert api.get(URL).status_code == 200
    assert not ApiRateCounter.objects.exists()
    assert not any("api_rate_counter" in q["sql"] for q in queries.captured_queries)


def test_a_rate_is_counted_in_one_row_per_thousand_of_it_up_to_the_shards_setting():
    assert parse_rate("3/minute", 8).shards == 1 and parse_rate("1999/hour", 8).shards == 1
    assert parse_rate("6000/min", 8).shards == 6 and parse_rate("100000/minute", 8).shards == 8
    assert parse_rate("100000/minute", 1).shards == 1
    assert (parse_rate("5/s").period, parse_rate("5/h").period, parse_rate("5/day").period) == (1, 3600, 86400)


# --- concurrency: one limit for every process ---------------------------------------------------


def take_concurrently(client_id: int, rate: store.RateLimit, requests: int) -> int:
    """`requests` RATE_TAKEs from as many threads (each its own connection), released together;
    how many were taken."""
    barrier = threading.Barrier(requests)
    taken: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        try:
            barrier.wait(timeout=10)
            ok = store.take_rate(client_id=client_id, rate=rate) is None
            with lock:
                taken.append(ok)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=take) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(taken) == requests
    return sum(taken)


def test_one_shard_is_exact_under_concurrent_requests(transactional_db):
    client = tenant("racer")
    away_from_a_window_boundary(3600)
    assert take_concurrently(client.pk, store.RateLimit(limit=10, period=3600, shards=1), 24) == 10


def test_several_shards_exceed_the_limit_by_the_requests_in_flight_at_most(transactional_db):
    client = tenant("racer")
    away_from_a_window_boundary(3600)
    limit, requests = 10, 24
    taken = take_concurrently(client.pk, store.RateLimit(limit=limit, period=3600, shards=4), requests)
    assert limit <= taken <= requests
    # Once they are committed, the sum is seen whole: nothing more is taken.
    assert take_concurrently(client.pk, store.RateLimit(limit=limit, period=3600, shards=4), 4) == 0


def test_two_api_processes_enforce_one_limit(start_api):
    """Two gunicorns (as on two hosts), two workers each, on the same database, with a limit
    of 12 an hour: counted per process it would let 48 through (12 per worker)."""
    env = {"NOTIFY_THROTTLE_RATE": "12/hour"}
    first, second = start_api(workers=2, env=env), start_api(workers=2, env=env)
    away_from_a_window_boundary(3600)

    # One after another: 6 through each, then neither takes a 13th, nor a GET.
    _, key = api_key_create(client=tenant("fleet"))
    auth = {"Authorization": f"Bearer {key}"}
    for api in (first, second) * 6:
        assert api.request("POST", URL, PAYLOAD, auth)[0] == 202
    for api in (first, second):
        status, headers, body = api.request("POST", URL, PAYLOAD, auth)
        assert status == 429 and body["error"]["code"] == "throttled" and 0 < int(headers["Retry-After"]) <= 3600
        assert api.request("GET", URL, None, auth)[0] == 429
    assert Notification.objects.filter(client=tenant("fleet")).count() == 12

    # All at once: 30 POSTs of another client, spread over both processes: exactly 12 accepted.
    _, key = api_key_create(client=tenant("burst"))
    auth = {"Authorization": f"Bearer {key}"}
    barrier = threading.Barrier(30)
    results: list[tuple[int, dict, dict]] = []
    lock = threading.Lock()

    def post(api) -> None:
        barrier.wait(timeout=20)
        answer = api.request("POST", URL, PAYLOAD, auth)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=post, args=(first if i % 2 else second,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [202] * 12 + [429] * 18, statuses
    assert all(0 < int(headers["Retry-After"]) <= 3600 for status, headers, _ in results if status == 429)
    assert Notification.objects.filter(client=tenant("burst")).count() == 12


# --- housekeeping ---------------------------------------------------------------------------------


def test_housekeeping_deletes_the_counters_of_clients_idle_for_a_day(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO api_rate_counter (client_id, shard, window_start, period, used) VALUES "
            "(1, 0, statement_timestamp() - interval '25 hours', 3600, 5), "  # ended 24 h ago: idle
            "(1, 1, statement_timestamp() - interval '23 hours', 3600, 5), "  # ended 22 h ago: kept
            "(2, 0, date_trunc('minute', statement_timestamp()), 60, 1)")  # the current window
    result = housekeeping.run_job("rate_counters")
    assert result == {"job": "rate_counters", "rate_counters": 1, "batches": 1}
    assert sorted(ApiRateCounter.objects.values_list("client_id", "shard")) == [(1, 1), (2, 0)]


def test_the_statements_read_the_counter_by_its_primary_key(db):
    """RATE_TAKE reads and writes the client's rows through api_rate_counter_pkey, never a scan
    of other clients' rows."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO api_rate_counter (client_id, shard, window_start, period, used) "
                       "SELECT c, s, date_trunc('minute', now()), 60, 1 FROM generate_series(1, 3000) c, "
                       "generate_series(0, 7) s")
        cursor.execute("ANALYZE api_rate_counter")
        cursor.execute("EXPLAIN " + sql.RATE_TAKE, {"client_id": 7, "rate_limit": 100, "rate_period": 60,
                                                    "rate_cost": 1, "rate_shard": 3})
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "api_rate_counter_pkey" in plan and "Seq Scan on api_rate_counter" not in plan, plan
