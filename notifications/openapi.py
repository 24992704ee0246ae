"""OpenAPI description of the API (drf-spectacular): the error format, bearer-key security,
examples, and the configured channels with their limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Callable

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from rest_framework import serializers
from rest_framework.fields import empty


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable: invalid, malformed_json, not_found, ...")
    message = serializers.CharField(help_text="For people.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="Validation errors by field; batch items as notifications[3].to.",
    )


class ErrorSerializer(serializers.Serializer):
    """Every 4xx and 5xx answer has this shape."""

    error = ErrorDetailSerializer()


class BatchAcceptedSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.UUIDField(), help_text="In the order of the request's items.")


def page_of(serializer_class: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The shape of a cursor-paginated list of `serializer_class`."""
    return type(f"{serializer_class.__name__.removesuffix('Serializer')}PageSerializer", (serializers.Serializer,), {
        "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
        "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null."),
        "results": serializer_class(many=True),
    })


class ChannelListSerializer(serializers.Serializer):
    channels = serializers.ListField(child=serializers.DictField())


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "notifications.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer ntf_...` (python manage.py create_api_key NAME).",
        }


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    descriptions = {
        400: "Invalid request: malformed JSON, or fields named in `fields`.",
        401: "No valid API key.",
        404: "No such notification (or other resource) for this client.",
        409: "Not possible in the notification's current status.",
        413: "Request body over the limit (256 KiB).",
        415: "Content type is not application/json.",
        422: "Idempotency-Key reused with a different body.",
        429: "Rate limit exceeded; see Retry-After.",
        503: "Database unavailable; nothing was stored; see Retry-After.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=descriptions[code]) for code in codes}


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description=(
        "Makes retries safe: a repeat with the same key and body returns the original "
        "notification(s) (header Idempotent-Replayed: true) instead of creating new ones; the "
        "same key with another body answers 422. Keys are per client, kept 24 h."
    ),
)

class ExampleFromNow(OpenApiExample):
    """An example whose value is built from the current time whenever the schema is generated
    (drf-spectacular reads `value` then; /api/schema/ is generated per request), so that its
    times stay within the API's limits however old the code: send_at in the future and at most
    NOTIFY_MAX_SCHEDULE_DAYS ahead, expires_at in the future and later than send_at."""

    def __init__(self, name: str, build: Callable[[datetime], dict], **kwargs):
        self.build = build
        super().__init__(name, **kwargs)

    @property
    def value(self):
        return self.build(timezone.now())

    @value.setter
    def value(self, value):  # OpenApiExample.__init__ sets it; drf-spectacular may replace it
        if value is not empty:
            self.build = lambda now: value


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _expiring_sms(now: datetime) -> dict:
    return {
        "channel": "sms-log", "to": "+14155550100", "message": "Your code is 123456",
        "priority": "high", "expires_at": _iso(now.replace(second=0, microsecond=0) + timedelta(hours=1)),
    }


def _scheduled_email(now: datetime) -> dict:
    tomorrow_9am = now.astimezone(UTC).replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return {
        "channel": "email-log", "to": "bob@example.com", "subject": "Reminder", "message": "Your appointment is today.",
        "send_at": _iso(tomorrow_9am), "expires_at": _iso(tomorrow_9am + timedelta(hours=12)),
    }


# Each one, POSTed as it is, is accepted under the default settings (tests/integration/notifications/test_api_schema.py).
SINGLE_EXAMPLES = [
    OpenApiExample("Email", request_only=True, value={
        "channel": "email-log", "to": "alice@example.com", "subject": "Welcome", "message": "Hello Alice",
    }),
    ExampleFromNow("SMS, high priority, expiring", _expiring_sms, request_only=True),
    OpenApiExample("Previous system's shape (type)", request_only=True, value={
        "type": "slack-log", "to": "#alerts", "message": "Deploy done",
    }),
    ExampleFromNow("Scheduled", _scheduled_email, request_only=True),
]

ERROR_EXAMPLE = OpenApiExample(
    "Invalid fields", response_only=True, status_codes=["400"],
    value={"error": {"code": "invalid", "message": "Invalid request: to: This field is required.",
                     "fields": {"to": ["This field is required."]}}},
)


def describe_channels(result, generator, request, public):
    """Postprocessing hook: document the configured channels and their limits."""
    from channels.registry import all_channels

    lines = ["", "## Configured channels", "", "| channel | kind | limits |", "|---|---|---|"]
    for name, channel in sorted(all_channels().items()):
        limits = channel.describe().get("limits") or {}
        text = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in limits.items()) or "-"
        lines.append(f"| `{name}` | {channel.kind} | {text} |")
    result["info"]["description"] = result["info"].get("description", "") + "\n".join(lines)
    return result


def without_slash_variants(endpoints):
    """Preprocessing hook: document the API's routes once (each also answers with a trailing
    slash), and not the schema's own route."""
    return [(path, regex, method, view) for path, regex, method, view in endpoints
            if path.startswith("/api/v1/") and not path.endswith("/")]
