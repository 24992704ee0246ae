"""The one error format of the API (notifications/api_errors.py), for any exception it is given:
domain errors raised outside a serializer, and whatever a validator quotes back."""

from __future__ import annotations

import json

from django.db import InterfaceError, InternalError, OperationalError
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer

from notifications.api_errors import exception_handler
from notifications.errors import InvalidNotification, NotificationNotFound, StatusConflict


def test_a_domain_error_outside_a_serializer_gets_the_same_answers():
    answers = [exception_handler(exc, {}) for exc in [
        InvalidNotification("to", "Not a phone number."), NotificationNotFound("n1"),
        StatusConflict("n1", "sent", "Notification n1 is sent; no."),
    ]]
    assert [(r.status_code, r.data) for r in answers] == [
        (400, {"error": {"code": "invalid", "message": "Invalid request: to: Not a phone number.",
                         "fields": {"to": ["Not a phone number."]}}}),
        (404, {"error": {"code": "not_found", "message": "No notification n1."}}),
        (409, {"error": {"code": "conflict", "message": "Notification n1 is sent; no."}}),
    ]


def test_an_error_answer_that_repeats_a_lone_surrogate_is_still_rendered():
    # Whatever DRF or a validator quotes back, the one error format renders it (no 500).
    response = exception_handler(ValidationError({"to\ud800": ["not \udfff valid"]}), {})
    rendered = json.loads(JSONRenderer().render(response.data))
    assert response.status_code == 400
    assert rendered["error"]["fields"] == {"to\ufffd": ["not \ufffd valid"]}


def test_the_database_out_of_reach_or_out_of_step_is_a_503_with_retry_after():
    # InternalError: psycopg's "received 2 results from command 'BEGIN'" while PgBouncer's
    # server connection died in a PostgreSQL restart (the cluster run's 500).
    for exc in (OperationalError("connection refused"), InterfaceError("connection already closed"),
                InternalError("received 2 results from command 'BEGIN'")):
        response = exception_handler(exc, {})
        assert (response.status_code, response["Retry-After"]) == (503, "5"), exc
        assert response.data["error"]["code"] == "database_unavailable"
        assert "received" not in response.data["error"]["message"]  # the driver's text stays in the log
