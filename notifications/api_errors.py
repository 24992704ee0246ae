"""One error format for every 4xx and 5xx answer of the API:

    {"error": {"code": "invalid", "message": "Invalid field(s): to", "fields": {"to": ["..."]}}}

`code` is stable and machine-readable, `message` is for people, `fields` (validation errors
only) names each offending field.

The domain errors that the services raise (notifications.errors) are given their answers here,
in `as_api_exception`, and nowhere else.
"""

from __future__ import annotations

import re

from django.db import InterfaceError, InternalError, OperationalError
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from . import errors

# Seconds a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER = 5
# A lone surrogate (JSON "\ud800") cannot be encoded as UTF-8: repeated in an error message
# (a field name, a value quoted back), it would turn a 400 into a 500.
_SURROGATE = re.compile("[\ud800-\udfff]")

_CODES = {
    exceptions.ParseError: "malformed_json",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.Throttled: "throttled",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
}


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"


def validation_error(exc: errors.InvalidNotification) -> exceptions.ValidationError:
    """The answer to an invalid notification: 400 "invalid", naming its field. Serializers
    raise it themselves (DRF reports only its own ValidationError per field and per batch
    item); anywhere else exception_handler makes it."""
    return exceptions.ValidationError({exc.field: [exc.message]})


def as_api_exception(exc: errors.NotificationError) -> exceptions.APIException | None:
    """The DRF exception that answers a domain error, with the error's own message; None for
    a domain error without an answer (it then fails the request as any bug does: 500)."""
    if isinstance(exc, errors.InvalidNotification):
        return validation_error(exc)
    if isinstance(exc, (errors.NotificationNotFound, errors.TemplateNotFound)):
        return exceptions.NotFound(exc.message)
    if isinstance(exc, (errors.StatusConflict, errors.TemplateExists)):
        return Conflict(exc.message)
    if isinstance(exc, errors.IdempotencyKeyReused):
        return IdempotencyKeyReused(exc.message)
    if isinstance(exc, errors.RateLimited):
        # The answer of DRF's throttles, as for every other request over the limit: 429,
        # "Request was throttled. Expected available in N seconds.", Retry-After: N.
        return exceptions.Throttled(wait=exc.retry_after)
    return None


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    body = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def error_response(code: str, message: str, status_code: int, fields: dict | None = None) -> JsonResponse:
    """The same format, for answers given outside DRF views (middleware, URL handlers)."""
    return JsonResponse(error_body(code, message, fields), status=status_code)


def exception_handler(exc, context):
    """DRF's exception handler, reshaped into the format above."""
    # The database (or the pooler before it) down, restarting or out of step with us. Not
    # only OperationalError: while PgBouncer's server connection died under a restart,
    # psycopg got "received 2 results from command 'BEGIN'", an InternalError (a 500 in the
    # cluster run). Nothing was stored; with its Idempotency-Key a retry is safe regardless.
    if isinstance(exc, (OperationalError, InterfaceError, InternalError)):
        response = Response(
            error_body("database_unavailable", "The database is unavailable; nothing was stored. Retry later."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response
    if isinstance(exc, errors.NotificationError):
        exc = as_api_exception(exc) or exc
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _as_field_dict(exc.detail)
        message = "Invalid request: " + "; ".join(
            f"{name}: {' '.join(str(m) for m in messages)}" for name, messages in fields.items()
        )
        response.data = error_body("invalid", message, fields)
    else:
        code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), getattr(exc, "default_code", "error"))
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        response.data = error_body(code, str(detail))
    response.data = _encodable(response.data)
    return response


def _encodable(data):
    """`data` with every lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(data, str):
        return _SURROGATE.sub("\ufffd", data)
    if isinstance(data, dict):
        return {_encodable(key): _encodable(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_encodable(item) for item in data]
    return data


def _as_field_dict(detail, prefix: str = "") -> dict[str, list[str]]:
    """Field errors as {"field": [messages]}; nested ones (batch items) as
    {"notifications[3].to": [messages]}, and an item's own errors as {"notifications[3]": [...]}."""
    if isinstance(detail, dict):
        fields: dict[str, list[str]] = {}
        for name, messages in detail.items():
            if name == "non_field_errors" and prefix:
                path = prefix
            elif isinstance(name, int) and prefix:  # a list field's item (ListField's errors)
                path = f"{prefix}[{name}]"
            else:
                path = f"{prefix}.{name}" if prefix else str(name)
            fields.update(_as_field_dict(messages, path))
        return fields
    if isinstance(detail, list) and any(isinstance(item, (dict, list)) for item in detail):
        fields = {}
        for index, item in enumerate(detail):  # a list serializer's errors: one entry per item
            if item:
                fields.update(_as_field_dict(item, f"{prefix}[{index}]"))
        return fields
    messages = detail if isinstance(detail, list) else [detail]
    return {prefix or "non_field_errors": [str(m) for m in messages]}
