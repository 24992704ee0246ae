"""The REST API (v1): accept notifications, read them back with their history."""

from __future__ import annotations

from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from channels.registry import all_channels

from . import services
from .models import Notification, Status
from .serializers import NotificationDetailSerializer, NotificationRequestSerializer, NotificationSerializer


class NewestFirst(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class NotificationListView(APIView):
    """POST: accept a notification for delivery (202). GET: list notifications, newest first."""

    FILTERS = {"status": "status", "channel": "channel", "to": "recipient"}

    def post(self, request):
        serializer = NotificationRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        notification = services.notification_create(**serializer.validated_data)
        location = reverse("notification-detail", kwargs={"pk": notification.id}, request=request)
        return Response(NotificationSerializer(notification).data, status=status.HTTP_202_ACCEPTED, headers={"Location": location})

    def get(self, request):
        params = request.query_params
        unknown = sorted(set(params) - set(self.FILTERS) - {"cursor", "page_size"})
        if unknown:
            raise ValidationError({name: [f"Unknown filter. Filters: {', '.join(self.FILTERS)}."] for name in unknown})
        if "status" in params and params["status"] not in Status.values:
            raise ValidationError({"status": [f"Must be one of: {', '.join(Status.values)}."]})
        queryset = Notification.objects.filter(
            **{field: params[name] for name, field in self.FILTERS.items() if name in params}
        )
        paginator = NewestFirst()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(NotificationSerializer(page, many=True).data)


class NotificationDetailView(APIView):
    """GET: one notification with its full status history."""

    def get(self, request, pk):
        notification = Notification.objects.prefetch_related("events").filter(pk=pk).first()
        if notification is None:
            return Response({"error": {"code": "not_found", "message": f"No notification {pk}."}}, status=404)
        return Response(NotificationDetailSerializer(notification).data)


class ChannelListView(APIView):
    """GET: the channels this service is configured with."""

    def get(self, request):
        return Response({"channels": [channel.describe() for _, channel in sorted(all_channels().items())]})
