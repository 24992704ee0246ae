"""The suppression list of the calling client: recipients it no longer sends to.

    GET    /api/v1/suppressions                      newest first; filters kind, to (normalised)
    DELETE /api/v1/suppressions/{kind}/{recipient}   send to it again

Entries are added by the delivery side (a hard bounce, a complaint, an unsubscribe, an SMS
opt-out, a Slack channel gone: outbox/sql.py RECORD and APPLY_RECEIPTS) and by hand in the
admin. A notification to a suppressed recipient is accepted as `suppressed` and never sent,
unless its request sets "ignore_suppression": true.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from channels.base import Message
from channels.errors import InvalidMessage
from channels.registry import all_channels

from .models import Suppression
from .openapi import errors, page_of
from .serializers import QueryParameters
from .views import NewestFirst


class SuppressionSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="The kind of channel: email, sms, slack, ...")
    to = serializers.CharField(source="recipient", help_text="The recipient, as notifications store it (normalised).")
    reason = serializers.CharField(help_text="What the provider said: a hard bounce, a complaint, an opt-out...")
    notification_id = serializers.UUIDField(allow_null=True, help_text="The notification whose outcome added it.")
    created_at = serializers.DateTimeField()


class SuppressionQuerySerializer(QueryParameters):
    kind = serializers.CharField(required=False)
    to = serializers.CharField(required=False, help_text="The recipient, in any form its kind's channels accept.")


def normalised(kind: str, recipient: str) -> str:
    """`recipient` as a channel of `kind` stores it (a phone number in E.164), so that it is
    found however the client writes it; as it is if no channel of that kind takes it."""
    for channel in all_channels().values():
        if channel.kind == kind:
            try:
                return channel.validate(Message(recipient=recipient, body="-")).recipient
            except InvalidMessage:
                continue
    return recipient


class SuppressionListView(APIView):
    """GET: the client's suppressed recipients, newest first."""

    @extend_schema(summary="Suppressed recipients, newest first", operation_id="suppressions_list",
                   parameters=[SuppressionQuerySerializer],
                   responses={200: page_of(SuppressionSerializer), **errors(400, 401, 429)})
    def get(self, request):
        query = SuppressionQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        entries = Suppression.objects.filter(client=request.user)
        if "kind" in query.validated_data:
            entries = entries.filter(kind=query.validated_data["kind"])
        if "to" in query.validated_data:
            to = query.validated_data["to"]
            kinds = [query.validated_data["kind"]] if "kind" in query.validated_data else \
                {channel.kind for channel in all_channels().values()}
            entries = entries.filter(recipient__in={to, *(normalised(kind, to) for kind in kinds)})
        paginator = NewestFirst()
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(SuppressionSerializer(page, many=True).data)


class SuppressionDetailView(APIView):
    """DELETE: send to this recipient again."""

    @extend_schema(summary="Remove a recipient from the suppression list",
                   description="`recipient` as sent in notifications (URL-encoded: `%23general`, `%2B14155550100`); "
                               "it is normalised as its kind's channels store it.",
                   responses={204: None, **errors(401, 404, 429)})
    def delete(self, request, kind: str, recipient: str):
        deleted, _ = Suppression.objects.filter(
            client=request.user, kind=kind, recipient__in={recipient, normalised(kind, recipient)}).delete()
        if not deleted:
            raise NotFound(f"{recipient!r} is not suppressed for {kind}.")
        return Response(status=status.HTTP_204_NO_CONTENT)
