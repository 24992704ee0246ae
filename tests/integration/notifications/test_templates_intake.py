"""Notifications rendered from templates at the intake: what is stored is what will be sent,
whatever happens to the template later; bad templates and data answer 400 and write nothing.
(The template API itself: test_templates_api.py; the sandbox: tests/unit/notifications/test_message_templates.py.)"""

from __future__ import annotations

import pytest

from notifications import template_store
from notifications.models import MessageTemplateVersion, Notification
from outbox.models import OutboxEntry
from tests.api_helpers import URL, assert_error
from tests.helpers import make_api_client, row_counts, tenant

ORDER_SHIPPED = {
    "email": {"subject": "Your order {{ order_id }} has shipped",
              "text": "Hello {{ name }}, order {{ order_id }} is on its way.",
              "html": "<p>Hello {{ name }}, order <b>{{ order_id }}</b> is on its way.</p>"},
    "sms": {"text": "Order {{ order_id }} shipped."},
    "sms-log": {"text": "[sms-log] Order {{ order_id }} shipped."},
}


@pytest.fixture
def api(db):
    client = make_api_client("shop")
    template_store.template_create(client=tenant("shop"), name="order-shipped", content=template_store.TemplateContent(
        locale="en", variants=ORDER_SHIPPED,
        translations={"de": {"email": {"subject": "Bestellung {{ order_id }} verschickt", "text": "Hallo {{ name }}"}}}))
    return client


def post(api, **fields):
    return api.post(URL, {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped",
                          "data": {"order_id": "A-1", "name": "Ann <3"}, **fields}, format="json")


def test_a_templated_notification_stores_what_was_rendered_with_the_template_and_version(api):
    answer = post(api)
    assert answer.status_code == 202, answer.content
    stored = Notification.objects.get(pk=answer.json()["id"])
    assert (stored.subject, stored.message) == ("Your order A-1 has shipped", "Hello Ann <3, order A-1 is on its way.")
    assert stored.html == "<p>Hello Ann &lt;3, order <b>A-1</b> is on its way.</p>"  # escaped in HTML only
    assert (stored.template, stored.template_version, stored.locale) == ("order-shipped", 1, "en")
    assert answer.json()["html"] == stored.html


def test_the_channel_name_variant_wins_over_the_kind_and_locales_fall_back(api):
    sms = post(api, channel="sms-log", to="+14155550100")
    assert Notification.objects.get(pk=sms.json()["id"]).message == "[sms-log] Order A-1 shipped."
    german = post(api, locale="de-AT")
    assert german.json()["subject"] == "Bestellung A-1 verschickt" and german.json()["locale"] == "de"
    french = post(api, locale="fr")
    assert french.json()["subject"] == "Your order A-1 has shipped" and french.json()["locale"] == "en"


def test_a_notification_keeps_its_content_after_the_template_changes_or_is_archived(api):
    first = post(api).json()
    template_store.template_update(client=tenant("shop"), name="order-shipped", content=template_store.TemplateContent(
        locale="en", variants={"email": {"subject": "New subject", "text": "New text"}}, translations={}))
    second = post(api).json()
    assert (second["subject"], second["template_version"]) == ("New subject", 2)
    pinned = post(api, template_version=1).json()
    assert (pinned["subject"], pinned["template_version"]) == ("Your order A-1 has shipped", 1)
    template_store.template_archive(client=tenant("shop"), name="order-shipped")
    kept = Notification.objects.get(pk=first["id"])
    assert (kept.subject, kept.template_version) == ("Your order A-1 has shipped", 1)
    assert_error(post(api), 400, "invalid", fields=["template"])


@pytest.mark.parametrize("fields, field", [
    ({"template": "no-such-template"}, "template"),
    ({"data": {"order_id": 1}}, "data"),  # name is missing
    ({"data": ["not", "an", "object"]}, "data"),
    ({"channel": "slack-log", "to": "#general"}, "template"),  # no variant for slack
    ({"message": "both"}, "message"),
    ({"template_version": 9}, "template"),
])
def test_bad_template_requests_answer_400_and_write_nothing(api, fields, field):
    before = row_counts()
    error = assert_error(post(api, **fields), 400, "invalid", fields=[field])
    assert row_counts() == before
    if fields.get("data") == {"order_id": 1}:
        assert "'name' is undefined" in error["fields"]["data"][0]


def test_a_template_that_reaches_outside_its_data_is_refused_at_render_too(db):
    """Saved past the checks (here straight into the store's tables), it is still refused by
    the sandbox when rendered."""
    api = make_api_client("sneaky")
    template_store.template_create(client=tenant("sneaky"), name="escape", content=template_store.TemplateContent(
        locale="en", variants={"email": {"text": "hello"}}, translations={}))
    MessageTemplateVersion.objects.filter(template__name="escape").update(
        variants={"email": {"text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}})
    before = row_counts()
    error = assert_error(api.post(URL, {"channel": "email-log", "to": "a@example.com", "template": "escape", "data": {}},
                                  format="json"), 400, "invalid", fields=["template"])
    assert "sandbox" in error["fields"]["template"][0]
    assert row_counts() == before


def test_a_batch_renders_each_item(api):
    answer = api.post(f"{URL}/batch", {"notifications": [
        {"channel": "email-log", "to": f"user{i}@example.com", "template": "order-shipped",
         "data": {"order_id": f"B-{i}", "name": f"User {i}"}} for i in range(3)]}, format="json")
    assert answer.status_code == 202, answer.content
    subjects = sorted(Notification.objects.filter(pk__in=answer.json()["ids"]).values_list("subject", flat=True))
    assert subjects == ["Your order B-0 has shipped", "Your order B-1 has shipped", "Your order B-2 has shipped"]
    assert OutboxEntry.objects.count() == 3


def test_a_template_that_names_a_private_attribute_is_refused_when_saved(db):
    with pytest.raises(template_store.InvalidNotification) as refused:
        template_store.template_create(client=tenant("sneaky"), name="escape", content=template_store.TemplateContent(
            locale="en", variants={"email": {"text": "hi\n{{ ''.__class__ }}"}}, translations={}))
    assert refused.value.field == "variants" and "line 2" in refused.value.message and "__class__" in refused.value.message


@pytest.mark.parametrize("version, field", [(0, "template_version"), (2**31, "template"), (2**63, "template"),
                                            (10**30, "template")])
def test_a_template_version_out_of_range_is_a_400_not_a_500(api, version, field):
    # Past an integer column's range there is no such version (the lookup is one SQL statement).
    before = row_counts()
    assert_error(post(api, template_version=version), 400, "invalid", fields=[field])
    assert row_counts() == before


def test_a_batch_of_costly_templates_stops_at_the_requests_cpu_budget(db, monkeypatch):
    """Each render may take up to its own limit; a batch shares one budget for all of them."""
    monkeypatch.setattr(template_store.RequestRendering, "CPU_SECONDS", 0.05)
    api = make_api_client("busy")
    template_store.template_create(client=tenant("busy"), name="busy", content=template_store.TemplateContent(
        locale="en", variants={"email": {"text": "{% for i in range(9000) %}{{ (range(500)|list|sort)[0] }}{% endfor %}x"}},
        translations={}))
    before = row_counts()
    answer = api.post(f"{URL}/batch", {"notifications": [
        {"channel": "email-log", "to": f"u{i}@example.com", "template": "busy", "data": {}} for i in range(50)]},
        format="json")
    error = assert_error(answer, 400, "invalid")
    assert any("CPU" in message for messages in error["fields"].values() for message in messages), error
    assert row_counts() == before


TEMPLATED_ITEMS = [
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "A-1"}},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped",
     "data": {"order_id": "A-1", "name": "Ann"}},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped",
     "data": {"order_id": "A-1", "name": "Ann"}, "locale": "de-AT", "template_version": 1, "priority": "low"},
    {"type": "sms-log", "to": "+1 415 555 0100", "template": "order-shipped", "data": {"order_id": 7}},
    {"channel": "email-log", "to": "ann@example.com", "template": " order-shipped", "data": {"order_id": "A-1", "name": "A"}},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "A-1", "name": "A"},
     "locale": " de"},
    {"channel": "email-log", "to": "ann@example.com", "template": "nope", "data": {}},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped"},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": None},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": [], "locale": "de"},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "A-1", "name": "A"},
     "template_version": 2},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "A-1", "name": "A"},
     "template_version": "1"},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "A-1", "name": "A"},
     "template_version": True},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "A-1", "name": "A"},
     "template_version": 0},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "A-1", "name": "A"},
     "message": "x"},
    {"channel": "email-log", "to": "ann@example.com", "message": "x", "locale": "de"},
    {"channel": "email-log", "to": "ann@example.com", "template": "order-shipped", "data": {"order_id": "\x00"}},
]


@pytest.mark.parametrize("item", TEMPLATED_ITEMS)
def test_the_intakes_short_path_renders_templates_as_the_serializer_does(api, item):
    """NotificationRequestSerializer._common_shape against the serializer's own path, with a
    real template: it takes only what the serializer takes, with the same notification."""
    import dataclasses

    from rest_framework import serializers

    from notifications.serializers import NotificationRequestSerializer

    context = {"client": tenant("shop"), "rendering": template_store.RequestRendering()}
    serializer = NotificationRequestSerializer(context=context)
    short = serializer._common_shape(item)
    try:
        reference = serializers.Serializer.run_validation(serializer, item)
    except serializers.ValidationError:
        reference = None
    if short is not None:
        assert reference is not None and dataclasses.replace(short, id=reference.id) == reference
    if item in TEMPLATED_ITEMS[1:4]:  # (the first lacks a variable: refused on both paths)
        assert short is not None  # the common shape takes the short path


def test_the_intake_renders_the_current_version_after_a_put_and_refuses_an_archived_one(api):
    """The intake keeps the versions it has built (template_store.template_version_get's
    `cached`): a new version, or an archived template, is seen by the very next request."""
    assert post(api).json()["template_version"] == 1  # v1 now built and kept by this process
    template_store.template_update(client=tenant("shop"), name="order-shipped", content=template_store.TemplateContent(
        locale="en", variants={"email": {"subject": "New {{ order_id }}", "text": "New text"}}, translations={}))
    second = post(api).json()
    assert (second["template_version"], second["subject"]) == (2, "New A-1")
    assert post(api, template_version=1).json()["subject"] == "Your order A-1 has shipped"
    template_store.template_archive(client=tenant("shop"), name="order-shipped")
    assert_error(post(api), 400, fields=["template"])
