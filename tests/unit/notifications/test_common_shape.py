"""The intake's written-out checks of the common request shape
(NotificationRequestSerializer._common_shape) accept exactly what the serializer's fields
accept, with the same notification: the serializer stays the one reference, and says what is
wrong with anything the short path does not take."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from notifications.serializers import COMMON_FIELDS, NotificationRequestSerializer

VALID = [
    {"channel": "email-log", "to": "alice@example.com", "message": "Hello"},
    {"type": "sms-log", "to": "+1 415 555 0100", "message": "Code 1234"},
    {"channel": "slack-log", "to": "#general", "message": "x", "subject": "", "priority": "high"},
    {"channel": "email-log", "to": "Alice@Example.COM", "message": " padded ", "subject": "Hi \u00e9",
     "metadata": {"order": [1, 2.5, None, {"a": "b"}], "ü": True}, "priority": "low", "ignore_suppression": True},
    {"channel": "fake", "to": "anyone", "message": "\u65e5\u672c"},
]

# Each is one step away from a valid item; the serializer refuses it or changes it.
NEAR_MISSES = [
    {"channel": " email-log", "to": "alice@example.com", "message": "Hello"},  # the field strips it
    {"channel": "email-log", "to": "alice@example.com ", "message": "Hello"},
    {"channel": "email-log", "to": "alice@example.com", "message": "   "},
    {"channel": "email-log", "to": "alice@example.com", "message": ""},
    {"channel": "email-log", "to": "alice@example.com"},
    {"channel": "email-log", "to": "alice@example.com", "message": "a\x00b"},
    {"channel": "email-log", "to": "alice@example.com", "message": "a\ud800b"},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "subject": "two\nlines"},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "subject": "s" * 999},
    {"channel": "e" * 101, "to": "alice@example.com", "message": "Hi"},
    {"channel": "email-log", "to": "a" * 513, "message": "Hi"},
    {"channel": "email-log", "to": "not-an-address", "message": "Hi"},
    {"channel": "nope", "to": "alice@example.com", "message": "Hi"},
    {"channel": "email-log", "type": "email-log", "to": "alice@example.com", "message": "Hi"},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "priority": "urgent"},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "priority": 1},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "priority": None},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "ignore_suppression": 1},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "ignore_suppression": "true"},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "metadata": []},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "metadata": {"x": float("nan")}},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "metadata": {"x": "\x00"}},
    {"channel": "email-log", "to": "alice@example.com", "message": 5},
    {"channel": "email-log", "to": None, "message": "Hi"},
    {"channel": ["email-log"], "to": "alice@example.com", "message": "Hi"},
    {"channel": "email-log", "to": "alice@example.com", "message": "Hi", "recipient": "x"},
    {"channel": "sms-log", "to": "+14155550100", "message": "m" * 1601},
]


def outcomes(item):
    """(the short path's notification or None, the serializer's notification or None)."""
    serializer = NotificationRequestSerializer(context={})
    short = serializer._common_shape(item)
    try:
        reference = serializers.Serializer.run_validation(serializer, item)
    except serializers.ValidationError:
        reference = None
    return short, reference


def same(short, reference) -> bool:
    return dataclasses.replace(short, id=reference.id) == reference


@pytest.mark.parametrize("item", VALID)
def test_a_valid_item_of_the_common_shape_takes_the_short_path_with_the_serializers_result(item):
    short, reference = outcomes(item)
    assert short is not None and reference is not None
    assert same(short, reference)


@pytest.mark.parametrize("item", NEAR_MISSES)
def test_what_the_serializer_refuses_or_changes_the_short_path_leaves_to_it(item):
    short, reference = outcomes(item)
    assert short is None


@pytest.mark.parametrize("item", NEAR_MISSES)
def test_through_the_serializer_a_near_miss_gets_the_answer_it_always_got(item):
    serializer = NotificationRequestSerializer(data=item, context={})
    reference = NotificationRequestSerializer(context={})
    try:
        expected = serializers.Serializer.run_validation(reference, item)
    except serializers.ValidationError as exc:
        assert not serializer.is_valid() and serializer.errors == {k: list(v) for k, v in exc.detail.items()}
    else:  # accepted once the field has stripped it
        assert serializer.is_valid() and same(serializer.validated_data, expected)


texts = st.one_of(st.sampled_from(["email-log", "sms-log", "slack-log", "fake", "alice@example.com", "+14155550100",
                                   "#general", "Hello", "", " ", "x\n", "high", "normal"]),
                  st.text(max_size=12))
values = st.one_of(texts, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=True),
                   st.lists(texts, max_size=2), st.dictionaries(texts, st.one_of(texts, st.floats()), max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(COMMON_FIELDS | {"locale", "other"})), values, max_size=6))
def test_any_item_the_short_path_accepts_the_serializer_accepts_the_same(item):
    short, reference = outcomes(item)
    if short is not None:
        assert reference is not None and same(short, reference)
