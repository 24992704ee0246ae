"""The API's request and response shapes."""

from __future__ import annotations

from rest_framework import serializers

from channels.registry import all_channels

from .models import Notification, NotificationEvent


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of converting them to text."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class NotificationRequestSerializer(serializers.Serializer):
    """POST /api/v1/notifications. `type` is accepted as an alias of `channel` (the field name
    of the previous system's API). Unknown fields are refused, so that a typo such as
    `recipient` for `to` is reported instead of silently dropped."""

    ALIASES = {"type": "channel"}

    channel = StrictCharField(max_length=100)
    to = StrictCharField(max_length=512)
    message = StrictCharField(trim_whitespace=False)
    subject = StrictCharField(required=False, allow_blank=True, max_length=998, default="", trim_whitespace=False)
    metadata = serializers.DictField(required=False, default=dict)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        data = dict(data)
        errors: dict[str, list[str]] = {}
        for alias, name in self.ALIASES.items():
            if alias in data:
                if name in data and data[name] != data[alias]:
                    errors[alias] = [f"Conflicts with {name!r}; send only one of them."]
                data[name] = data.pop(alias)
        expected = "channel (or type), to, message, subject, metadata"
        for name in sorted(set(data) - set(self.fields)):
            errors[name] = [f"Unknown field. Expected: {expected}."]
            del data[name]
        if isinstance(data.get("message"), str) and not data["message"].strip():
            errors["message"] = ["This field may not be blank."]
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            errors = {**exc.detail, **errors}
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate_metadata(self, value: dict) -> dict:
        # PostgreSQL's jsonb cannot hold NUL (\u0000) in a key or a string: refuse it here
        # (400) instead of failing at the insert (500). The text fields refuse it already.
        def has_nul(item) -> bool:
            if isinstance(item, str):
                return "\x00" in item
            if isinstance(item, dict):
                return any(has_nul(k) or has_nul(v) for k, v in item.items())
            if isinstance(item, list):
                return any(has_nul(v) for v in item)
            return False

        if has_nul(value):
            raise serializers.ValidationError("Null characters are not allowed.")
        return value

    def validate_channel(self, value: str) -> str:
        known = all_channels()
        if value not in known:
            raise serializers.ValidationError(f"Unknown channel {value!r}. Known channels: {', '.join(sorted(known))}.")
        return value


class NotificationEventSerializer(serializers.ModelSerializer):
    at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = NotificationEvent
        fields = ["status", "at", "attempt", "error", "provider_message_id", "dispatcher", "next_attempt_at"]


class NotificationSerializer(serializers.ModelSerializer):
    to = serializers.CharField(source="recipient")

    class Meta:
        model = Notification
        fields = [
            "id", "status", "channel", "to", "subject", "message", "metadata", "attempts",
            "last_error", "provider_message_id", "created_at", "updated_at", "sent_at",
        ]


class NotificationDetailSerializer(NotificationSerializer):
    events = NotificationEventSerializer(many=True, read_only=True)

    class Meta(NotificationSerializer.Meta):
        fields = NotificationSerializer.Meta.fields + ["events"]
