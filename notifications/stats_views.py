"""GET /api/v1/stats: the calling client's delivery statistics (notifications.stats), the
same figures as the admin's statistics page shows for all clients."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Status
from .openapi import errors
from .stats import TOP_FAILURE_REASONS, notification_stats

StatusCountsSerializer = type("StatusCountsSerializer", (serializers.Serializer,), {
    "__doc__": "A count for every status (zero included).",
    **{status: serializers.IntegerField(min_value=0) for status in Status.values},
})


class ChannelCountsSerializer(serializers.Serializer):
    channel = serializers.CharField()
    total = serializers.IntegerField(min_value=0)
    by_status = StatusCountsSerializer()


class MinuteCountSerializer(serializers.Serializer):
    minute = serializers.DateTimeField(help_text="The minute's start (UTC).")
    count = serializers.IntegerField(min_value=0, help_text="Notifications sent in that minute.")


class ChannelLatencySerializer(serializers.Serializer):
    channel = serializers.CharField()
    count = serializers.IntegerField(min_value=0, help_text="Sent notifications the percentiles are taken over.")
    p50 = serializers.FloatField(allow_null=True, help_text="Seconds from acceptance to sent: median.")
    p95 = serializers.FloatField(allow_null=True, help_text="Seconds: 95th percentile.")
    p99 = serializers.FloatField(allow_null=True, help_text="Seconds: 99th percentile.")


class FailureReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="The last error of failed notifications (first 500 characters).")
    count = serializers.IntegerField(min_value=1)
    channels = serializers.ListField(child=serializers.CharField(), help_text="The channels it occurred on.")


class StatsWindowSerializer(serializers.Serializer):
    name = serializers.CharField(help_text='"hour" or "day".')
    minutes = serializers.IntegerField(help_text="60 or 1,440: the current minute and the whole minutes before it.")
    since = serializers.DateTimeField(help_text="The window's start: the first minute of the series.")
    until = serializers.DateTimeField(help_text="The window's end: the time of the figures.")
    accepted = serializers.IntegerField(min_value=0, help_text="Notifications accepted in the window.")
    delivered = serializers.IntegerField(min_value=0, help_text="Of those, how many were sent in the window.")
    by_status = StatusCountsSerializer(help_text="The accepted notifications by their status now.")
    by_channel = ChannelCountsSerializer(many=True, help_text="The same by channel, channels with none left out.")
    deliveries_per_minute = MinuteCountSerializer(many=True, help_text="One point per minute, oldest first, zeros included.")
    latency_seconds = ChannelLatencySerializer(many=True, help_text="Acceptance to sent, per channel with sent notifications.")
    top_failure_reasons = FailureReasonSerializer(many=True, help_text=f"At most {TOP_FAILURE_REASONS}, most frequent first.")


class StatsSerializer(serializers.Serializer):
    generated_at = serializers.DateTimeField(help_text="The database's time when the figures were taken.")
    client = serializers.CharField(allow_null=True, help_text="The client whose notifications are counted.")
    hour = StatsWindowSerializer(help_text="The last hour.")
    day = StatsWindowSerializer(help_text="The last day.")


class StatsView(APIView):
    """GET: delivery statistics of the calling client for the last hour and the last day."""

    @extend_schema(
        summary="Delivery statistics: the last hour and the last day",
        description=(
            "Figures about the calling client's notifications accepted in the last hour and in the last "
            "day (the current minute and the 59, or 1,439, whole minutes before it): counts by status and "
            "by channel, deliveries per minute (by the minute of `sent_at`, zeros included), latency from "
            "acceptance to sent per channel (p50, p95, p99, in seconds) and the most frequent reasons of "
            "failure. A notification accepted before a window and sent within it is not counted in it."
        ),
        responses={200: StatsSerializer, **errors(401, 429)},
    )
    def get(self, request):
        return Response(StatsSerializer(notification_stats(client=request.user)).data)
