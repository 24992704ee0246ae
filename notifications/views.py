"""The REST API (v1): accept notifications, read them back with their history, cancel, resend.

Every view is authenticated by API key (notifications.auth); a client sees only its own
notifications, and another client's id answers 404.
"""

from __future__ import annotations

import datetime as dt
import uuid
from base64 import b64decode
from urllib import parse

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from channels.registry import all_channels
from outbox.models import ChannelState

from . import services, template_store, throttling
from .models import Notification
from .openapi import (
    ERROR_EXAMPLE,
    IDEMPOTENCY_KEY,
    SINGLE_EXAMPLES,
    BatchAcceptedSerializer,
    ChannelListSerializer,
    errors,
    page_of,
)
from .serializers import (
    BatchRequestSerializer,
    NotificationDetailSerializer,
    NotificationListQuerySerializer,
    NotificationRequestSerializer,
    NotificationSerializer,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX = 255


class NewestFirst(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request) -> Cursor | None:
        """The cursor of a `next` or `previous` link, or None for the first page.

        DRF's own decoding answers 404 for a cursor it cannot read, clamps a large offset,
        reads any integer as the direction, and passes any position on to the query (where a
        position that is not a datetime fails: 500). A cursor is what DRF's encode_cursor
        writes, base64 of `o=<offset>&r=1&p=<created_at>` (each part optional), and anything
        else is a bad parameter: 400 naming `cursor`.
        """
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            text = b64decode(encoded.encode("ascii")).decode("ascii")
            tokens = parse.parse_qs(text, keep_blank_values=True, strict_parsing=True, max_num_fields=3)
        except ValueError:  # not ASCII, not base64, not a query string (binascii.Error, UnicodeError)
            raise _invalid_cursor() from None
        if set(tokens) - {"o", "r", "p"} or any(len(values) != 1 for values in tokens.values()):
            raise _invalid_cursor()
        offset = tokens.get("o", ["0"])[0]
        reverse = tokens.get("r", ["0"])[0]
        position = tokens.get("p", [None])[0]
        cutoff = str(self.offset_cutoff)
        if not (offset.isascii() and offset.isdigit() and len(offset) <= len(cutoff) and int(offset) <= self.offset_cutoff):
            raise _invalid_cursor()
        if reverse not in ("0", "1"):
            raise _invalid_cursor()
        if position is not None:
            position = _cursor_position(position)
        return Cursor(offset=int(offset), reverse=reverse == "1", position=position)


class OldestFirst(NewestFirst):
    """The same pages, oldest first (events to catch up on, a template's versions)."""

    ordering = ("created_at", "id")


def _cursor_position(text: str) -> str:
    """A cursor's position, created_at as DRF writes it (str() of an aware datetime), in that
    canonical form; refused unless it is an aware datetime that PostgreSQL can compare."""
    try:
        when = parse_datetime(text) if text.isascii() else None  # parse_datetime's \d takes any digit
        if when is None or when.utcoffset() is None:
            raise ValueError(text)
        when.astimezone(dt.timezone.utc)  # 0001-01-01 00:00+01:00 is before year 1 in UTC
    except (ValueError, OverflowError):
        raise _invalid_cursor() from None
    return str(when)


def _invalid_cursor() -> ValidationError:
    return ValidationError({"cursor": ["Invalid cursor; use the next or previous link of a page."]})


def _idempotency_key(request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX:
        raise ValidationError({IDEMPOTENCY_HEADER: [f"Must be 1 to {IDEMPOTENCY_KEY_MAX} characters."]})
    if "\x00" in key:  # PostgreSQL text cannot hold it
        raise ValidationError({IDEMPOTENCY_HEADER: ["Null characters are not allowed."]})
    return key


def _create(request, endpoint: str, notifications: list) -> tuple[list, bool]:
    key = _idempotency_key(request)
    return services.notifications_create(
        client=request.user, notifications=notifications, idempotency_key=key,
        fingerprint=services.request_fingerprint(endpoint, request.data) if key else "",
        rate=throttling.configured_rate(),  # counted by the enqueue itself (rate_counted_by_enqueue)
    )


def _intake_context(request) -> dict:
    """What the intake's validation needs beyond the body: the client (its templates), and a
    cache of the template versions a batch renders."""
    return {"client": request.user, "rendering": template_store.RequestRendering()}


def _detail_path(notification_id) -> str:
    """The path of a notification (its Location): the URL pattern reversed once per process,
    not per request."""
    global _DETAIL_PATH
    if _DETAIL_PATH is None:
        placeholder = uuid.UUID(int=0)
        _DETAIL_PATH = reverse("notification-detail", kwargs={"pk": placeholder}).replace(str(placeholder), "{}")
    return _DETAIL_PATH.format(notification_id)


_DETAIL_PATH: str | None = None


def _replayed_headers(replayed: bool) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if replayed else {}


class NotificationListView(APIView):
    """POST: accept a notification for delivery (202). GET: list notifications, newest first."""

    FILTERS = {"status": "status", "channel": "channel", "to": "recipient"}
    # Its POST is counted against the rate limit by the statement that enqueues (throttling).
    rate_counted_by_enqueue = True

    @extend_schema(
        summary="Send a notification",
        description=(
            "Accepts a notification for delivery: it is committed (with its outbox row) before the "
            "202 answer, and sent at least once. Nothing is sent during the request. `to` is checked "
            "by the channel: an email address, a phone number in international form (stored as "
            "E.164), a Slack channel id or #name, a webhook target. See the channels and their limits "
            "in the description above."
        ),
        request=NotificationRequestSerializer, parameters=[IDEMPOTENCY_KEY],
        responses={202: NotificationSerializer, **errors(400, 401, 413, 415, 422, 429, 503)},
        examples=[*SINGLE_EXAMPLES, ERROR_EXAMPLE],
    )
    def post(self, request):
        serializer = NotificationRequestSerializer(data=request.data, context=_intake_context(request))
        serializer.is_valid(raise_exception=True)
        new = serializer.validated_data
        (written,), replayed = _create(request, "notifications", [new])
        if replayed:  # the earlier request's notification, as it is now
            notification = Notification.objects.get(pk=written.id)
        else:
            notification = services.as_notification(new, written, request.user)
        location = request.build_absolute_uri(_detail_path(notification.id))
        return Response(
            NotificationSerializer(notification).data, status=status.HTTP_202_ACCEPTED,
            headers={"Location": location, **_replayed_headers(replayed)},
        )

    @extend_schema(
        summary="List notifications, newest first", operation_id="notifications_list",
        parameters=[NotificationListQuerySerializer],
        responses={200: page_of(NotificationSerializer), **errors(400, 401, 429)},
    )
    def get(self, request):
        query = NotificationListQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        filters = {self.FILTERS[name]: value for name, value in query.validated_data.items() if name in self.FILTERS}
        queryset = Notification.objects.filter(client=request.user, **filters)
        paginator = NewestFirst()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(NotificationSerializer(page, many=True).data)


class NotificationBatchView(APIView):
    """POST: accept up to 1,000 notifications at once, all or nothing (202, ids in order)."""

    # Counted as its number of notifications by the statement that enqueues them (throttling).
    rate_counted_by_enqueue = True

    @extend_schema(
        summary="Send up to 1,000 notifications at once",
        description="All items are validated first; one invalid item rejects the whole batch (errors by index), "
                    "otherwise all are written in one transaction.",
        request=BatchRequestSerializer, parameters=[IDEMPOTENCY_KEY],
        responses={202: BatchAcceptedSerializer, **errors(400, 401, 413, 415, 422, 429, 503)},
        examples=[
            OpenApiExample("Two notifications", request_only=True, value={"notifications": [
                {"channel": "email-log", "to": "alice@example.com", "message": "Hi Alice"},
                {"channel": "sms-log", "to": "+14155550100", "message": "Hi Bob"},
            ]}),
            OpenApiExample("Accepted", response_only=True, status_codes=["202"], value={
                "count": 2, "ids": ["01a21c76-8eab-7351-a1ff-f81368dcb49b", "01a21c76-8eab-7351-a1ff-f81368dcb49c"],
            }),
        ],
    )
    def post(self, request):
        serializer = BatchRequestSerializer(data=request.data, context=_intake_context(request))
        serializer.is_valid(raise_exception=True)
        written, replayed = _create(request, "notifications/batch", serializer.validated_data)
        return Response(
            {"count": len(written), "ids": [str(n.id) for n in written]},
            status=status.HTTP_202_ACCEPTED, headers=_replayed_headers(replayed),
        )


class NotificationDetailView(APIView):
    """GET: one notification with its full status history."""

    @extend_schema(summary="A notification with its history", responses={200: NotificationDetailSerializer, **errors(401, 404, 429)})
    def get(self, request, pk):
        notification = Notification.objects.prefetch_related("events").filter(pk=pk, client=request.user).first()
        if notification is None:
            raise NotFound(f"No notification {pk}.")
        return Response(NotificationDetailSerializer(notification).data)


class NotificationCancelView(APIView):
    """POST: cancel a scheduled, queued or retrying notification; 409 once its send started."""

    @extend_schema(summary="Cancel a notification", request=None,
                   description="A scheduled, queued or retrying notification is cancelled and never sent, also "
                               "while a dispatcher holds it, as long as its send has not started.",
                   responses={200: NotificationDetailSerializer, **errors(401, 404, 409, 429)})
    def post(self, request, pk):
        services.notification_cancel(notification_id=pk, client_id=request.user.pk, by=f"client {request.user.name}")
        return _detail(request, pk)


class NotificationResendView(APIView):
    """POST: queue a sent or failed notification again; 409 otherwise."""

    @extend_schema(summary="Send a notification again", request=None,
                   description="A sent or failed notification is queued again; its history keeps every earlier attempt.",
                   responses={202: NotificationDetailSerializer, **errors(401, 404, 409, 429)})
    def post(self, request, pk):
        services.notification_resend(notification_id=pk, client_id=request.user.pk, by=f"client {request.user.name}")
        return _detail(request, pk, status.HTTP_202_ACCEPTED)


def _detail(request, pk, code: int = status.HTTP_200_OK) -> Response:
    notification = Notification.objects.prefetch_related("events").get(pk=pk)
    return Response(NotificationDetailSerializer(notification).data, status=code)


class ChannelListView(APIView):
    """GET: the channels this service is configured with."""

    @extend_schema(summary="Configured channels, their kinds, limits, rate budgets, circuit breakers and fallbacks",
                   description="`receipts_url`: where the channel's provider posts delivery receipts (null: none).",
                   responses={200: ChannelListSerializer, **errors(401)})
    def get(self, request):
        states = {state.channel: state for state in ChannelState.objects.all()}
        return Response({"channels": [{**channel.describe(), "state": _state_of(states.get(name)),
                                       "receipts_url": _receipts_url(request, channel)}
                                      for name, channel in sorted(all_channels().items())]})


def _receipts_url(request, channel) -> str | None:
    """The URL to give the channel's provider for its delivery receipts, as this request
    reached the service (None: the channel takes no receipts)."""
    route = channel.receipts_route()
    return request.build_absolute_uri(f"/{route}") if route else None


def _state_of(state: ChannelState | None) -> dict | None:
    """What the fleet knows of a channel with a policy now (None: no policy, or no claim yet)."""
    if state is None:
        return None
    return {"circuit_breaker": state.breaker, "open_until": state.breaker_until if state.breaker != "closed" else None,
            "paused_until": state.paused_until, "consecutive_failures": state.failures}
