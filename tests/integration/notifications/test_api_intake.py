"""POST /api/v1/notifications: acceptance, validation, the error format, atomicity."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from channels.validation import LINE_BREAKS
from notifications.models import Notification, NotificationEvent
from outbox.models import OutboxEntry
from tests import api_helpers
from tests.api_helpers import URL
from tests.helpers import make_api_client, row_counts

KNOWN_CHANNELS = ["email-log", "fake", "slack-log", "sms-log"]


@pytest.fixture
def client(db):
    return make_api_client()


def post(client, payload, url=URL):
    return client.post(url, payload, format="json")


def assert_error(response, status: int, code: str | None = None, fields=()) -> dict:
    """The uniform error shape (api_helpers.assert_error), naming each field in its message,
    and nothing stored."""
    error = api_helpers.assert_error(response, status, code, fields)
    for name in fields:
        assert name in error["message"], error
    assert row_counts() == (0, 0, 0)
    return error


# --- accepted ------------------------------------------------------------------------------


def test_valid_request_is_accepted_with_location_and_written_once(client, db):
    response = post(client, {"channel": "email-log", "to": "alice@example.com", "message": "Hello", "subject": "Hi"})

    assert response.status_code == 202, response.content
    body = response.json()
    notification_id = uuid.UUID(body["id"])
    assert body["status"] == "queued"
    assert body["channel"] == "email-log"
    assert body["to"] == "alice@example.com"
    assert body["subject"] == "Hi"
    assert body["message"] == "Hello"
    assert body["metadata"] == {}
    assert body["attempts"] == 0
    assert body["sent_at"] is None
    assert datetime.fromisoformat(body["created_at"].replace("Z", "+00:00")).tzinfo is not None
    assert response["Location"].endswith(f"/api/v1/notifications/{notification_id}")

    assert row_counts() == (1, 1, 1)
    stored = Notification.objects.get()
    assert stored.id == notification_id
    assert (stored.channel, stored.recipient, stored.subject, stored.message, stored.status) == (
        "email-log", "alice@example.com", "Hi", "Hello", "queued",
    )
    assert datetime.fromisoformat(body["created_at"].replace("Z", "+00:00")) == stored.created_at
    event = NotificationEvent.objects.get()
    assert (event.notification_id, event.status, event.attempt) == (notification_id, "queued", 0)
    entry = OutboxEntry.objects.get()
    assert (entry.notification_id, entry.channel, entry.attempts, entry.locked_by) == (notification_id, "email-log", 0, None)

    # The Location answers with the same notification.
    detail = client.get(response["Location"])
    assert detail.status_code == 200
    assert detail.json()["id"] == str(notification_id)


@pytest.mark.parametrize("url", [URL, URL + "/"])
def test_with_and_without_trailing_slash(client, db, url):
    response = post(client, {"channel": "fake", "to": "anyone", "message": "hi"}, url=url)
    assert response.status_code == 202, response.content
    assert row_counts() == (1, 1, 1)


def test_type_is_an_alias_of_channel(client, db):
    # The previous system's clients send {"type", "message", "to"}.
    response = post(client, {"type": "sms-log", "message": "Your code is 1234", "to": "+14155550100"})
    assert response.status_code == 202, response.content
    assert response.json()["channel"] == "sms-log"
    assert Notification.objects.get().channel == "sms-log"


def test_type_and_channel_both_given_and_equal_is_accepted(client, db):
    response = post(client, {"type": "fake", "channel": "fake", "message": "hi", "to": "x"})
    assert response.status_code == 202, response.content


def test_type_and_channel_both_given_but_different_is_refused(client, db):
    response = post(client, {"type": "fake", "channel": "email-log", "message": "hi", "to": "a@example.com"})
    assert_error(response, 400, "invalid", fields=["type"])


def test_metadata_is_stored_and_returned(client, db):
    metadata = {"order": 42, "tags": ["a", "b"], "nested": {"ok": True}}
    response = post(client, {"channel": "fake", "to": "x", "message": "hi", "metadata": metadata})
    assert response.status_code == 202, response.content
    assert response.json()["metadata"] == metadata
    assert Notification.objects.get().metadata == metadata
    assert client.get(response["Location"]).json()["metadata"] == metadata


def test_message_keeps_its_whitespace(client, db):
    response = post(client, {"channel": "fake", "to": "x", "message": "  indented\nline two\n"})
    assert response.status_code == 202
    assert Notification.objects.get().message == "  indented\nline two\n"


def test_a_body_under_the_limit_is_accepted(client, db):
    message = "x" * (settings.NOTIFY_MAX_REQUEST_BYTES - 1024)
    response = post(client, {"channel": "fake", "to": "x", "message": message})
    assert response.status_code == 202
    assert Notification.objects.get().message == message


def test_valid_post_runs_one_query_once_the_key_is_known(client, db, django_assert_num_queries):
    # The first request of a key looks it up (1 query); later ones find it in the process's
    # key cache, so authentication, validation and the insert cost one statement in all.
    with django_assert_num_queries(2):
        assert post(client, {"channel": "email-log", "to": "alice@example.com", "message": "Hello"}).status_code == 202
    with django_assert_num_queries(1):
        response = post(client, {"channel": "email-log", "to": "bob@example.com", "message": "Hello"})
    assert response.status_code == 202
    assert row_counts() == (2, 2, 2)


# --- recipients the channel checks ----------------------------------------------------------


@pytest.mark.parametrize(
    "channel, to",
    [
        ("email-log", "not-an-email"),
        ("email-log", "alice@"),
        ("sms-log", "12345"),
        ("sms-log", "4155550100"),  # no country code
        ("slack-log", "general"),
        ("slack-log", "#General Channel"),
    ],
)
def test_recipient_refused_by_the_channel(client, db, channel, to):
    response = post(client, {"channel": channel, "to": to, "message": "hi"})
    error = assert_error(response, 400, "invalid", fields=["to"])
    assert set(error["fields"]) == {"to"}


@pytest.mark.parametrize(
    "channel, to, stored",
    [
        ("sms-log", "+1 415 555 0100", "+14155550100"),
        ("sms-log", "+44 20 7946 0958", "+442079460958"),
        ("email-log", "Alice@EXAMPLE.COM", "Alice@example.com"),
        ("slack-log", "#general", "#general"),
        ("slack-log", "C0123ABCD", "C0123ABCD"),
    ],
)
def test_recipient_accepted_and_normalised(client, db, channel, to, stored):
    response = post(client, {"channel": channel, "to": to, "message": "hi"})
    assert response.status_code == 202, response.content
    assert response.json()["to"] == stored
    assert Notification.objects.get().recipient == stored


@pytest.mark.parametrize("subject", ["Hello\r\nBcc: victim@example.com", "line\nbreak", "carriage\rreturn"])
def test_email_subject_with_cr_or_lf_is_refused(client, db, subject):
    response = post(client, {"channel": "email-log", "to": "a@example.com", "message": "hi", "subject": subject})
    assert_error(response, 400, "invalid", fields=["subject"])


@pytest.mark.parametrize("channel, to", [("email-log", "a@example.com"), ("fake", "x"), ("sms-log", "+14155550100")])
@pytest.mark.parametrize("line_break", sorted(LINE_BREAKS), ids=lambda c: f"U+{ord(c):04X}")
def test_subject_with_any_line_break_is_refused_for_every_channel(client, db, channel, to, line_break):
    response = post(client, {"channel": channel, "to": to, "message": "hi", "subject": f"Hello{line_break}Bcc: x@example.com"})
    assert_error(response, 400, "invalid", fields=["subject"])


def test_subject_with_a_line_break_in_a_batch_is_refused_by_index(client, db):
    items = [{"channel": "fake", "to": "x", "message": "hi", "subject": "fine"},
             {"channel": "fake", "to": "x", "message": "hi", "subject": "not\x1cfine"}]
    error = api_helpers.assert_error(post(client, {"notifications": items}, url=api_helpers.BATCH_URL), 400, "invalid")
    assert list(error["fields"]) == ["notifications[1].subject"], error
    assert row_counts() == (0, 0, 0)


def test_subject_with_other_unicode_is_accepted(client, db):
    response = post(client, {"channel": "email-log", "to": "a@example.com", "message": "hi", "subject": "Caf\u00e9 \u2014 \u00bd\tprice"})
    assert response.status_code == 202, response.content


def test_sms_body_over_the_provider_limit_is_refused(client, db):
    response = post(client, {"channel": "sms-log", "to": "+14155550100", "message": "x" * 1601})
    assert_error(response, 400, "invalid", fields=["message"])


# --- malformed requests ---------------------------------------------------------------------


def test_malformed_json(client, db):
    response = client.post(URL, data='{"channel": "fake", "to": ', content_type="application/json")
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "content_type, data",
    [
        ("text/plain", "channel=fake&to=x&message=hi"),
        ("application/x-www-form-urlencoded", "channel=fake&to=x&message=hi"),
    ],
)
def test_non_json_content_type(client, db, content_type, data):
    response = client.post(URL, data=data, content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")


def test_unknown_channel_lists_the_known_ones(client, db):
    response = post(client, {"channel": "pigeon", "to": "x", "message": "hi"})
    error = assert_error(response, 400, "invalid", fields=["channel"])
    text = " ".join(error["fields"]["channel"])
    assert "pigeon" in text
    for name in KNOWN_CHANNELS:
        assert name in text
        assert name in error["message"]


def test_an_unknown_channel_is_reported_with_the_other_fields_errors(client, db):
    response = post(client, {"channel": "pigeon", "message": " ", "recipient": "x"})
    error = assert_error(response, 400, "invalid", fields=["channel", "to", "message", "recipient"])
    assert error["fields"]["channel"] == ["Unknown channel 'pigeon'. Known channels: email-log, fake, slack-log, sms-log."]


def test_the_intake_service_names_the_field_it_refuses(db):
    from notifications import services
    from notifications.errors import InvalidNotification

    with pytest.raises(InvalidNotification) as unknown:
        services.notification_validate(channel="pigeon", to="x", message="hi")
    assert unknown.value.field == "channel" and "Known channels: email-log, fake" in unknown.value.message
    with pytest.raises(InvalidNotification) as refused:
        services.notification_validate(channel="email-log", to="bob@", message="hi")
    assert refused.value.field == "to"


def test_missing_fields_are_each_named(client, db):
    response = post(client, {})
    error = assert_error(response, 400, "invalid", fields=["channel", "to", "message"])
    assert set(error["fields"]) == {"channel", "to", "message"}


def test_one_missing_field_is_named(client, db):
    response = post(client, {"channel": "fake", "to": "x"})
    error = assert_error(response, 400, "invalid", fields=["message"])
    assert set(error["fields"]) == {"message"}


@pytest.mark.parametrize("field", ["channel", "to", "message"])
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_or_blank_fields(client, db, field, value):
    payload = {"channel": "fake", "to": "x", "message": "hi", field: value}
    error = assert_error(post(client, payload), 400, "invalid", fields=[field])
    assert set(error["fields"]) == {field}


def test_unknown_fields_are_named(client, db):
    # `recipient` is a typo for `to`: reported, not silently dropped.
    response = post(client, {"channel": "fake", "recipient": "x", "message": "hi", "urgency": "high"})
    error = assert_error(response, 400, "invalid", fields=["recipient", "urgency", "to"])
    assert set(error["fields"]) == {"recipient", "urgency", "to"}


def test_body_over_256_kib_is_refused_with_413(client, db):
    assert settings.NOTIFY_MAX_REQUEST_BYTES == 256 * 1024
    payload = {"channel": "fake", "to": "x", "message": "x" * (256 * 1024)}
    response = post(client, payload)
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize("payload", [[{"channel": "fake", "to": "x", "message": "hi"}], "a string", 42, None])
def test_json_that_is_not_an_object(client, db, payload):
    response = client.post(URL, data=json.dumps(payload), content_type="application/json")
    assert_error(response, 400, "invalid")


@pytest.mark.parametrize("field, value", [("to", 4155550100), ("to", True), ("message", 12), ("channel", ["fake"])])
def test_non_string_fields_are_refused(client, db, field, value):
    payload = {"channel": "fake", "to": "x", "message": "hi", field: value}
    assert_error(post(client, payload), 400, "invalid", fields=[field])


@pytest.mark.parametrize("metadata", [["a"], "text", 3, None])
def test_metadata_that_is_not_an_object(client, db, metadata):
    payload = {"channel": "fake", "to": "x", "message": "hi", "metadata": metadata}
    assert_error(post(client, payload), 400, "invalid", fields=["metadata"])


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"channel": "fake", "to": "x", "message": "a\u0000b"}, "message"),
        ({"channel": "fake", "to": "x\u0000", "message": "hi"}, "to"),
        ({"channel": "fake", "to": "x", "message": "hi", "metadata": {"k": "a\u0000b"}}, "metadata"),
        ({"channel": "fake", "to": "x", "message": "hi", "metadata": {"k\u0000": 1}}, "metadata"),
        ({"channel": "fake", "to": "x", "message": "hi", "metadata": {"k": ["\u0000"]}}, "metadata"),
    ],
)
def test_nul_characters_are_refused_not_a_server_error(client, db, payload, field):
    # PostgreSQL stores no NUL in text or jsonb: refused at intake, not a 500 at the insert.
    assert_error(post(client, payload), 400, "invalid", fields=[field])


def nested(depth: int) -> str:
    """A JSON object `depth` levels deep: {"a": {"a": ... 1 ...}}."""
    return '{"a":' * (depth - 1) + '{"a":1' + "}" * depth


@pytest.mark.parametrize(
    "raw",
    [
        r'{"channel":"fake","to":"x","message":"hi","metadata":{"k":"\ud800"}}',
        r'{"channel":"fake","to":"x","message":"hi","metadata":{"\udfff":1}}',
        r'{"channel":"fake","to":"x","message":"hi","metadata":{"k":1e999}}',
        r'{"channel":"fake","to":"x","message":"hi","metadata":{"k":[-1e999]}}',
        '{"channel":"fake","to":"x","message":"hi","metadata":' + nested(33) + "}",
        '{"channel":"fake","to":"x","message":"hi","metadata":' + nested(600) + "}",
    ],
    ids=["surrogate-value", "surrogate-key", "infinity", "minus-infinity-in-list", "depth-33", "depth-600"],
)
def test_metadata_jsonb_cannot_store_is_refused_not_a_server_error(db, raw):
    client = make_api_client(raise_request_exception=False)
    response = client.post(URL, data=raw.encode(), content_type="application/json")
    assert_error(response, 400, "invalid", fields=["metadata"])


@pytest.mark.parametrize(
    "raw",
    [
        r'{"channel":"fake","to":"x","message":"a\ud800b"}',
        r'{"channel":"fake","to":"x\udfff","message":"hi"}',
        r'{"channel":"email-log","to":"a@example.com","message":"hi","subject":"\ud800"}',
    ],
)
def test_surrogates_in_text_fields_are_refused(db, raw):
    response = make_api_client(raise_request_exception=False).post(URL, data=raw.encode(), content_type="application/json")
    assert_error(response, 400, "invalid")


# Each as a JSON escape, and as an error answer names it (a lone surrogate by its escape).
HOSTILE = {"nul": (r"\u0000", "\x00"), "high-surrogate": (r"\ud800", r"\ud800"), "low-surrogate": (r"\udfff", r"\udfff")}
VALID = {"channel": "email-log", "to": "a@example.com", "message": "hi", "subject": "s", "metadata": {"k": "v"},
         "priority": "normal", "send_at": None, "expires_at": None}
MARK = "@@hostile@@"


def with_mark(where: str) -> dict:
    """VALID with MARK in one string place: a field, `type`, a metadata key or value, or an
    unknown field's name."""
    item = dict(VALID)
    if where == "type":
        item["type"] = item.pop("channel") + MARK
    elif where == "metadata key":
        item["metadata"] = {"k" + MARK: "v"}
    elif where == "metadata value":
        item["metadata"] = {"k": ["v", {"n": "v" + MARK}]}
    elif where == "unknown field":
        item["x" + MARK] = 1
    elif where in ("send_at", "expires_at"):  # valid but for MARK (fromisoformat stops at a NUL)
        item[where] = f"{timezone.now() + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}{MARK}junk"
    else:
        item[where] = item[where] + MARK
    return item


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize("escape, named", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("where", ["channel", "type", "to", "message", "subject", "metadata key", "metadata value",
                                   "priority", "send_at", "expires_at", "unknown field"])
def test_nul_and_lone_surrogates_in_any_string_are_refused_and_write_nothing(db, where, escape, named, batch):
    # PostgreSQL's text and jsonb hold neither, nor can an answer (UTF-8) repeat a lone surrogate.
    body = {"notifications": [VALID, with_mark(where)]} if batch else with_mark(where)
    raw = json.dumps(body).replace(MARK, escape)
    client = make_api_client(raise_request_exception=False)
    response = client.post(api_helpers.BATCH_URL if batch else URL, data=raw.encode(), content_type="application/json")
    error = assert_error(response, 400, "invalid")
    assert len(error["fields"]) == 1, error
    name = next(iter(error["fields"]))
    expected = {"type": "channel", "metadata key": "metadata", "metadata value": "metadata", "unknown field": "x" + named}.get(where, where)
    assert name == (f"notifications[1].{expected}" if batch else expected), error


@pytest.mark.parametrize("escape, named", HOSTILE.values(), ids=HOSTILE.keys())
def test_nul_and_lone_surrogates_in_an_unknown_batch_field_are_refused(db, escape, named):
    raw = json.dumps({"notifications": [VALID], "x" + MARK: 1}).replace(MARK, escape)
    client = make_api_client(raise_request_exception=False)
    response = client.post(api_helpers.BATCH_URL, data=raw.encode(), content_type="application/json")
    assert list(assert_error(response, 400, "invalid")["fields"]) == ["x" + named]


def test_nul_in_the_idempotency_key_is_refused(client, db):
    response = client.post(URL, {"channel": "fake", "to": "x", "message": "hi"}, format="json", HTTP_IDEMPOTENCY_KEY="a\x00b")
    assert_error(response, 400, "invalid", fields=["Idempotency-Key"])


def test_metadata_at_the_depth_limit_is_accepted(client, db):
    raw = '{"channel":"fake","to":"x","message":"hi","metadata":' + nested(32) + "}"
    response = client.post(URL, data=raw.encode(), content_type="application/json")
    assert response.status_code == 202, response.content
    assert row_counts() == (1, 1, 1)


def test_json_nested_too_deeply_for_the_decoder_is_malformed(db):
    raw = '{"channel":"fake","to":"x","message":"hi","metadata":' + nested(5000) + "}"
    response = make_api_client(raise_request_exception=False).post(URL, data=raw.encode(), content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_nan_is_malformed_json(client, db):
    raw = '{"channel":"fake","to":"x","message":"hi","metadata":{"k":NaN}}'
    assert_error(client.post(URL, data=raw, content_type="application/json"), 400, "malformed_json")


def test_subject_over_998_characters_is_refused(client, db):
    payload = {"channel": "email-log", "to": "a@example.com", "message": "hi", "subject": "s" * 999}
    assert_error(post(client, payload), 400, "invalid", fields=["subject"])


def test_unknown_notification_url_answers_in_the_error_format(client, db):
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_wrong_method_answers_in_the_error_format(client, db):
    assert_error(client.delete(URL), 405, "method_not_allowed")


# --- atomicity --------------------------------------------------------------------------------


@pytest.fixture
def outbox_insert_fails(transactional_db):
    """A trigger that makes every INSERT into the outbox table fail."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION test_outbox_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'outbox insert refused by test trigger';
            END $$;
            CREATE TRIGGER test_outbox_refuse BEFORE INSERT ON outbox
                FOR EACH ROW EXECUTE FUNCTION test_outbox_refuse();
            """
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER IF EXISTS test_outbox_refuse ON outbox; DROP FUNCTION IF EXISTS test_outbox_refuse();"
            )


def test_failed_outbox_insert_writes_nothing(outbox_insert_fails):
    client = make_api_client(raise_request_exception=False)
    response = post(client, {"channel": "email-log", "to": "alice@example.com", "message": "Hello"})
    assert response.status_code >= 500
    assert list(response.json()) == ["error"]
    assert Notification.objects.count() == 0
    assert NotificationEvent.objects.count() == 0
    assert OutboxEntry.objects.count() == 0


# --- the answer's shape --------------------------------------------------------------------


def test_the_hand_written_answer_equals_drfs_generic_serialization(client, db):
    """NotificationSerializer and NotificationDetailSerializer write their fields directly
    (serializers.py); DRF's generic walk of the declared fields must give the same answer, for
    notifications with every optional field set and with none."""
    from rest_framework import serializers as drf

    from notifications.serializers import NotificationDetailSerializer, NotificationSerializer

    full = post(client, {"channel": "email-log", "to": "ann@example.com", "subject": "S", "message": "M",
                         "metadata": {"order": [1, {"x": None}], "ü": "é"}, "priority": "high",
                         "send_at": (timezone.now() + timedelta(hours=1)).isoformat(),
                         "expires_at": (timezone.now() + timedelta(hours=2)).isoformat()})
    bare = post(client, {"type": "sms-log", "to": "+14155550100", "message": "M"})
    assert full.status_code == bare.status_code == 202
    Notification.objects.filter(pk=bare.json()["id"]).update(sent_at=timezone.now(), provider_message_id="p-1",
                                                              attempts=2, last_error="x")
    for answer in (full, bare):
        notification = Notification.objects.get(pk=answer.json()["id"])
        for serializer_class in (NotificationSerializer, NotificationDetailSerializer):
            serializer = serializer_class(notification)
            generic = drf.Serializer.to_representation(serializer, notification)
            assert serializer.data == generic
            assert list(serializer.data) == list(generic)  # the same order of keys
        if answer is full:  # the 202 answer, built from what was written, is the stored notification's
            assert answer.json() == json.loads(json.dumps(NotificationSerializer(notification).data))
