"""The REST API (v1): accept notifications, read them back with their history, cancel, resend.

Every view is authenticated by API key (notifications.auth); a client sees only its own
notifications, and another client's id answers 404.
"""

from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from channels.registry import all_channels

from . import services
from .models import Notification, Status
from .serializers import (
    BatchRequestSerializer,
    NotificationDetailSerializer,
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


def _idempotency_key(request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX:
        raise ValidationError({IDEMPOTENCY_HEADER: [f"Must be 1 to {IDEMPOTENCY_KEY_MAX} characters."]})
    return key


def _create(request, endpoint: str, items: list[dict]) -> tuple[list[Notification], bool]:
    key = _idempotency_key(request)
    return services.notifications_create(
        client=request.user, items=items, idempotency_key=key,
        fingerprint=services.request_fingerprint(endpoint, request.data) if key else "",
    )


def _replayed_headers(replayed: bool) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if replayed else {}


class NotificationListView(APIView):
    """POST: accept a notification for delivery (202). GET: list notifications, newest first."""

    FILTERS = {"status": "status", "channel": "channel", "to": "recipient"}

    def post(self, request):
        serializer = NotificationRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        (notification,), replayed = _create(request, "notifications", [serializer.validated_data])
        location = reverse("notification-detail", kwargs={"pk": notification.id}, request=request)
        return Response(
            NotificationSerializer(notification).data, status=status.HTTP_202_ACCEPTED,
            headers={"Location": location, **_replayed_headers(replayed)},
        )

    def get(self, request):
        params = request.query_params
        unknown = sorted(set(params) - set(self.FILTERS) - {"cursor", "page_size"})
        if unknown:
            raise ValidationError({name: [f"Unknown filter. Filters: {', '.join(self.FILTERS)}."] for name in unknown})
        if "status" in params and params["status"] not in Status.values:
            raise ValidationError({"status": [f"Must be one of: {', '.join(Status.values)}."]})
        queryset = Notification.objects.filter(
            client=request.user, **{field: params[name] for name, field in self.FILTERS.items() if name in params}
        )
        paginator = NewestFirst()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(NotificationSerializer(page, many=True).data)


class NotificationBatchView(APIView):
    """POST: accept up to 1,000 notifications at once, all or nothing (202, ids in order)."""

    def post(self, request):
        serializer = BatchRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        notifications, replayed = _create(request, "notifications/batch", serializer.validated_data)
        return Response(
            {"count": len(notifications), "ids": [str(n.id) for n in notifications]},
            status=status.HTTP_202_ACCEPTED, headers=_replayed_headers(replayed),
        )


class NotificationDetailView(APIView):
    """GET: one notification with its full status history."""

    def get(self, request, pk):
        notification = Notification.objects.prefetch_related("events").filter(pk=pk, client=request.user).first()
        if notification is None:
            raise NotFound(f"No notification {pk}.")
        return Response(NotificationDetailSerializer(notification).data)


class NotificationCancelView(APIView):
    """POST: cancel a scheduled, queued or retrying notification; 409 once its send started."""

    def post(self, request, pk):
        services.notification_cancel(notification_id=pk, client_id=request.user.pk, by=f"client {request.user.name}")
        return _detail(request, pk)


class NotificationResendView(APIView):
    """POST: queue a sent or failed notification again; 409 otherwise."""

    def post(self, request, pk):
        services.notification_resend(notification_id=pk, client_id=request.user.pk, by=f"client {request.user.name}")
        return _detail(request, pk, status.HTTP_202_ACCEPTED)


def _detail(request, pk, code: int = status.HTTP_200_OK) -> Response:
    notification = Notification.objects.prefetch_related("events").get(pk=pk)
    return Response(NotificationDetailSerializer(notification).data, status=code)


class ChannelListView(APIView):
    """GET: the channels this service is configured with."""

    def get(self, request):
        return Response({"channels": [channel.describe() for _, channel in sorted(all_channels().items())]})
