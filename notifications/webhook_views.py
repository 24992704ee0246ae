"""Status webhooks of the calling client, and its status events.

    POST   /api/v1/webhook-endpoints        register a URL for some event types (201; the
                                            signing secret is shown in this answer only)
    GET    /api/v1/webhook-endpoints        the client's endpoints (without secrets)
    GET    /api/v1/webhook-endpoints/{id}
    DELETE /api/v1/webhook-endpoints/{id}   events are no longer queued for it
    GET    /api/v1/events                   the client's status events, oldest first, to
                                            catch up after downtime (filters since, type,
                                            notification)

Once a client has an endpoint, every status change of the notifications it sends (accepted,
sent, delivered, undelivered, failed, suppressed, cancelled, expired) is a StatusEvent, written
by a trigger in the same transaction as the change, and queued for each endpoint subscribed to
its type; the
dispatchers post it (channels.backends.webhook.StatusWebhookChannel), signed like the
webhook channel, at least once, retried with backoff. Receivers de-duplicate by the event id
(X-Notify-Event-Id, and "id" in the body) and order a notification's events by "sequence".
"""

from __future__ import annotations

import secrets

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from channels.backends.webhook import url_problem

from .models import StatusEvent, WebhookEndpoint
from .openapi import errors, page_of
from .serializers import QueryParameters, StrictCharField, StrictDateTimeField
from .views import OldestFirst

MAX_ENDPOINTS_PER_CLIENT = 20


class WebhookEndpointSerializer(serializers.Serializer):
    id = serializers.UUIDField(read_only=True)
    url = StrictCharField(max_length=2048, help_text="An http(s) URL on a public address, without user:password.")
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEndpoint.EVENT_TYPES,
                                      error_messages={"invalid_choice": f"Must be one of: {', '.join(WebhookEndpoint.EVENT_TYPES)}."}),
        required=False, allow_empty=False, min_length=1, max_length=len(WebhookEndpoint.EVENT_TYPES),
        help_text="The event types to receive; all of them if left out.")
    created_at = serializers.DateTimeField(read_only=True)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"url", "event_types"})
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field. Expected: url, event_types."] for name in unknown})
        return super().to_internal_value(data)

    def validate_url(self, value: str) -> str:
        problem = url_problem(value, allow_private=settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS)
        if problem:
            hint = "" if settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS else \
                " (private and loopback addresses need NOTIFY_WEBHOOK_ALLOW_PRIVATE_TARGETS=true on the server)"
            raise serializers.ValidationError(f"{problem}{hint if 'allowed' in problem else ''}.")
        return value


class NewWebhookEndpointSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="The signing secret: shown in this answer only.")


class EventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    sequence = serializers.IntegerField(help_text="The notification's events are numbered 1, 2, 3... in order.")
    notification_id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    payload = serializers.DictField(help_text="The webhook's body, exactly as posted.")


class EventQuerySerializer(QueryParameters):
    since = StrictDateTimeField(required=False, help_text="Events at or after this time.")
    type = serializers.ChoiceField(choices=WebhookEndpoint.EVENT_TYPES, required=False)
    notification = serializers.UUIDField(required=False, help_text="The events of one notification.")


class WebhookEndpointListView(APIView):
    """POST: register an endpoint (201, with its signing secret). GET: the client's endpoints."""

    @extend_schema(
        summary="Register a webhook endpoint for status events", request=WebhookEndpointSerializer,
        responses={201: NewWebhookEndpointSerializer, **errors(400, 401, 429)},
        examples=[OpenApiExample("Delivery outcomes", request_only=True, value={
            "url": "https://hooks.example.com/notify-status", "event_types": ["delivered", "undelivered", "failed"]})],
    )
    def post(self, request):
        serializer = WebhookEndpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if WebhookEndpoint.objects.filter(client=request.user).count() >= MAX_ENDPOINTS_PER_CLIENT:
            raise serializers.ValidationError({"url": [f"A client has at most {MAX_ENDPOINTS_PER_CLIENT} endpoints."]})
        endpoint = WebhookEndpoint.objects.create(
            client=request.user, url=serializer.validated_data["url"],
            event_types=serializer.validated_data.get("event_types") or list(WebhookEndpoint.EVENT_TYPES),
            secret="whsec_" + secrets.token_urlsafe(32),
        )
        endpoint.refresh_from_db(fields=["created_at"])
        return Response(NewWebhookEndpointSerializer(endpoint).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="The client's webhook endpoints", responses={200: WebhookEndpointSerializer(many=True),
                                                                       **errors(401, 429)})
    def get(self, request):
        endpoints = WebhookEndpoint.objects.filter(client=request.user).order_by("created_at")
        return Response(WebhookEndpointSerializer(endpoints, many=True).data)


class WebhookEndpointDetailView(APIView):
    """GET: one endpoint. DELETE: stop queueing events for it."""

    def _endpoint(self, request, pk) -> WebhookEndpoint:
        endpoint = WebhookEndpoint.objects.filter(pk=pk, client=request.user).first()
        if endpoint is None:
            raise NotFound(f"No webhook endpoint {pk}.")
        return endpoint

    @extend_schema(summary="A webhook endpoint", responses={200: WebhookEndpointSerializer, **errors(401, 404, 429)})
    def get(self, request, pk):
        return Response(WebhookEndpointSerializer(self._endpoint(request, pk)).data)

    @extend_schema(summary="Delete a webhook endpoint",
                   description="No event is queued for it from now on; deliveries already queued are still made.",
                   responses={204: None, **errors(401, 404, 429)})
    def delete(self, request, pk):
        self._endpoint(request, pk).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class EventListView(APIView):
    """GET: the client's status events, oldest first."""

    @extend_schema(summary="Status events, oldest first (to catch up)", operation_id="events_list",
                   parameters=[EventQuerySerializer],
                   responses={200: page_of(EventSerializer), **errors(400, 401, 429)})
    def get(self, request):
        query = EventQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        events = StatusEvent.objects.filter(client=request.user)
        if "since" in query.validated_data:
            events = events.filter(created_at__gte=query.validated_data["since"])
        if "type" in query.validated_data:
            events = events.filter(type=query.validated_data["type"])
        if "notification" in query.validated_data:
            events = events.filter(notification_id=query.validated_data["notification"])
        paginator = OldestFirst()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(EventSerializer(page, many=True).data)
