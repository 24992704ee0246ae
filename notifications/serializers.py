"""The API's request and response shapes."""

from __future__ import annotations

import math
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from channels.validation import has_line_break
from outbox.store import NewNotification

from . import services
from .api_errors import validation_error
from .errors import InvalidNotification
from .models import Priority, Status

PRIORITY_LABELS = dict(Priority.choices)  # 0 -> "high": what an answer shows
PRIORITY_VALUES = {label: value for value, label in Priority.choices}
# The fields of a request of the common shape (NotificationRequestSerializer._common_shape).
TEMPLATE_FIELDS = frozenset({"template", "data", "template_version", "locale"})
COMMON_FIELDS = frozenset({"channel", "type", "to", "message", "subject", "metadata", "priority",
                           "ignore_suppression"}) | TEMPLATE_FIELDS


def _plain(value, max_length: int | None = None, *, trimmed: bool = False) -> bool:
    """A string field that a StrictCharField takes as it is: a str of at most `max_length`
    characters, without NUL or lone surrogates, and (`trimmed`) not blank, without leading
    or trailing whitespace (which the field would strip)."""
    if type(value) is not str or (max_length is not None and len(value) > max_length) or "\x00" in value:
        return False
    if trimmed and (not value or value != value.strip()):
        return False
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return False
    return True
_DATETIME = serializers.DateTimeField()  # how answers write a time (NotificationSerializer)

# A send_at this little in the past (client clocks drift) means "now".
SEND_AT_TOLERANCE = timedelta(minutes=5)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of converting them to text."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictDateTimeField(serializers.DateTimeField):
    """A DateTimeField that refuses NUL characters: Python's datetime.fromisoformat stops
    reading at one, so that "2030-01-01T09:00:00Z\\u0000junk" would be accepted."""

    def to_internal_value(self, value):
        if isinstance(value, str) and "\x00" in value:
            raise serializers.ValidationError("Null characters are not allowed.")
        return super().to_internal_value(value)


class StrictBooleanField(serializers.BooleanField):
    """A BooleanField that takes JSON true and false only, not "yes", 1 or "on"."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


def writable(name: str) -> str:
    """A client's field name as an answer can repeat it (UTF-8): a lone surrogate, which no
    answer can encode, written as its escape (\\ud800)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


METADATA_MAX_DEPTH = 32


def jsonb_problem(value) -> str | None:
    """Why PostgreSQL's jsonb (or the JSON encoder before it) cannot store `value`, or None.

    jsonb refuses NUL (\\u0000), lone surrogates and non-finite numbers (1e999 parses as inf),
    and deep nesting overflows the encoder's recursion: refused here (400) instead of failing
    at the insert (500). Iterative, so that checking a deep value cannot overflow either.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth > METADATA_MAX_DEPTH:
            return f"Objects and arrays nested deeper than {METADATA_MAX_DEPTH} levels."
        if isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "Null characters are not allowed."
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "Surrogate characters are not allowed."
        elif isinstance(item, float) and not math.isfinite(item):
            return "Numbers must be finite."
    return None


class FieldsBoundOnce:
    """A serializer whose fields are built and bound once per class, not per instance.

    DRF deep-copies every declared field for each serializer instance (and a ModelSerializer
    also rebuilds them from the model), which cost more than the rest of an accepted request
    (measured: ~1.5 ms of ~5 ms). That is safe to skip where no field keeps state between uses
    or reads the serializer's context: the answers' fields only read, and the request's fields
    only convert and check a value (the checks that need the context, such as the channel's,
    are the serializer's own validate methods, which run on the instance). One bound set then
    serves every instance and thread.
    """

    @property
    def fields(self):
        cls = type(self)
        bound = cls.__dict__.get("_bound_fields")
        if bound is None:
            bound = cls._bound_fields = super().fields
        return bound


class NotificationRequestSerializer(FieldsBoundOnce, serializers.Serializer):
    """POST /api/v1/notifications. `type` is accepted as an alias of `channel` (the field name
    of the previous system's API). Unknown fields are refused, so that a typo such as
    `recipient` for `to` is reported instead of silently dropped. Its fields are bound once
    (FieldsBoundOnce): none of them reads the context."""

    ALIASES = {"type": "channel"}

    channel = StrictCharField(max_length=100)
    to = StrictCharField(max_length=512)
    message = StrictCharField(required=False, trim_whitespace=False)
    subject = StrictCharField(required=False, allow_blank=True, max_length=998, trim_whitespace=False)
    metadata = serializers.DictField(required=False, default=dict)
    priority = serializers.ChoiceField(
        choices=[label for _, label in Priority.choices], required=False, default="normal",
        # DRF's message repeats the value, which may hold a lone surrogate that no answer can encode.
        error_messages={"invalid_choice": f"Must be one of: {', '.join(label for _, label in Priority.choices)}."},
    )
    send_at = StrictDateTimeField(required=False, default=None, allow_null=True)
    expires_at = StrictDateTimeField(required=False, default=None, allow_null=True)
    ignore_suppression = StrictBooleanField(
        required=False, default=False,
        help_text="Send even if the recipient is on your suppression list (an opt-out, a hard bounce).")
    template = StrictCharField(required=False, max_length=100,
                               help_text="A template of yours (POST /api/v1/templates), instead of subject and message.")
    template_version = serializers.IntegerField(required=False, min_value=1,
                                                help_text="The version to render; the current one if left out.")
    locale = StrictCharField(required=False, max_length=35,
                             help_text="The template's locale to use (de-AT, then de, then the template's default).")
    data = serializers.DictField(required=False, help_text="The template's variables.")

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
        expected = ("channel (or type), to, message, subject, metadata, priority, send_at, expires_at, "
                    "ignore_suppression, template, template_version, locale, data")
        for name in sorted(set(data) - set(self.fields)):
            errors[writable(name)] = [f"Unknown field. Expected: {expected}."]
            del data[name]
        if isinstance(data.get("message"), str) and not data["message"].strip():
            errors["message"] = ["This field may not be blank."]
        errors = {**_content_source_errors(data), **errors}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            errors = {**exc.detail, **errors}
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def run_validation(self, data=serializers.empty):
        # The common shape, valid, is checked without DRF's field machinery; anything else, and
        # any problem, goes through the serializer, which is the reference (and says what is wrong).
        new = self._common_shape(data)
        return new if new is not None else super().run_validation(data)

    def _common_shape(self, data) -> NewNotification | None:
        """The notification of a request with only the fields of COMMON_FIELDS (no send_at or
        expires_at), each valid: the checks the fields would make, written out (a batch item
        costs half as much); None for any other request or at the first problem.
        tests/unit/notifications/test_common_shape.py and test_templates_intake.py check that
        it accepts exactly what the serializer accepts, with the same result."""
        if type(data) is not dict or not data.keys() <= COMMON_FIELDS or ("type" in data and "channel" in data):
            return None
        channel, to = data.get("channel", data.get("type")), data.get("to")
        metadata, priority = data.get("metadata", {}), data.get("priority", "normal")
        ignore = data.get("ignore_suppression", False)
        if not (_plain(channel, 100, trimmed=True) and _plain(to, 512, trimmed=True)
                and type(metadata) is dict and jsonb_problem(metadata) is None
                and type(priority) is str and priority in PRIORITY_VALUES and type(ignore) is bool):
            return None
        if "template" in data:
            content = self._template_fields(data)
        else:
            content = self._message_fields(data)
        if content is None:
            return None
        try:
            return services.notification_validate(
                channel=channel, to=to, metadata=metadata, priority=PRIORITY_VALUES[priority],
                ignore_suppression=ignore, client_id=getattr(self.context.get("client"), "pk", None),
                rendering=self.context.get("rendering"), **content)
        except InvalidNotification:
            return None

    @staticmethod
    def _message_fields(data: dict) -> dict | None:
        """message and subject, as the fields and validate_subject take them; None otherwise."""
        message, subject = data.get("message"), data.get("subject", "")
        if (data.keys() & TEMPLATE_FIELDS or not _plain(message) or not message.strip()
                or not _plain(subject, 998) or has_line_break(subject)):
            return None
        return {"message": message, "subject": subject}

    @staticmethod
    def _template_fields(data: dict) -> dict | None:
        """template, data, template_version and locale, as the fields take them; None otherwise."""
        version, locale, values = data.get("template_version"), data.get("locale"), data.get("data")
        if ("message" in data or "subject" in data or not _plain(data["template"], 100, trimmed=True)
                or (version is not None and not (type(version) is int and version >= 1))
                or ("template_version" in data and version is None)
                or (locale is not None and not _plain(locale, 35, trimmed=True)) or ("locale" in data and locale is None)
                or (values is not None and not (type(values) is dict and jsonb_problem(values) is None))
                or ("data" in data and values is None)):
            return None
        content = {"template": data["template"], "template_version": version, "data": values}
        if locale is not None:
            content["locale"] = locale
        return content

    def validate_subject(self, value: str) -> str:
        """One line, whatever the channel: a line break in a header would fail at send time."""
        if has_line_break(value):
            raise serializers.ValidationError("Must be a single line (no CR, LF or other line break).")
        return value

    def validate_metadata(self, value: dict) -> dict:
        problem = jsonb_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_send_at(self, value):
        if value is None:
            return None
        now = timezone.now()
        horizon = timedelta(days=settings.NOTIFY_MAX_SCHEDULE_DAYS)
        if value < now - SEND_AT_TOLERANCE:
            raise serializers.ValidationError("Must not be in the past.")
        if value > now + horizon:
            raise serializers.ValidationError(f"At most {settings.NOTIFY_MAX_SCHEDULE_DAYS} days ahead.")
        return value

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate(self, attrs) -> NewNotification:
        """The fields are valid: check them against the channel, and return the notification
        ready to enqueue (so `validated_data` is a NewNotification)."""
        if attrs.get("send_at") and attrs.get("expires_at") and attrs["expires_at"] <= attrs["send_at"]:
            raise serializers.ValidationError({"expires_at": ["Must be later than send_at."]})
        attrs["priority"] = Priority[attrs["priority"].upper()].value
        try:
            return services.notification_validate(**attrs, client_id=getattr(self.context.get("client"), "pk", None),
                                                  rendering=self.context.get("rendering"))
        except InvalidNotification as exc:
            raise validation_error(exc) from None

    def validate_data(self, value: dict) -> dict:
        problem = jsonb_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_channel(self, value: str) -> str:
        """The service's channel check (services.channel_get), run with the other fields' own
        checks so that an unknown channel is reported together with their errors."""
        try:
            services.channel_get(name=value)
        except InvalidNotification as exc:
            raise serializers.ValidationError(exc.message) from None
        return value


class QueryParameters(serializers.Serializer):
    """A list's query parameters: an unknown one is refused (400 naming it), not ignored, and
    the cursor pages (NewestFirst) take `page_size` and `cursor`."""

    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500, help_text="Default 50.")
    cursor = serializers.CharField(required=False, help_text="From the `next` or `previous` link.")

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: [f"Unknown query parameter. Expected: {', '.join(self.fields)}."] for name in unknown})
        return super().to_internal_value(data)


def _content_source_errors(data: dict) -> dict[str, list[str]]:
    """Either message (with an optional subject) or a template (with data, and optionally its
    version and locale), not both: the errors of a request's fields, by name."""
    if "template" in data:
        return {name: ["Give either message and subject, or template and data."]
                for name in ("message", "subject") if name in data}
    errors = {name: ["Only with a template."] for name in ("data", "template_version", "locale") if name in data}
    if "message" not in data:
        errors["message"] = ["This field is required (or give a template)."]
    return errors


class NotificationListQuerySerializer(QueryParameters):
    """The query parameters of GET /api/v1/notifications."""

    status = serializers.ChoiceField(
        choices=Status.values, required=False,
        error_messages={"invalid_choice": f"Must be one of: {', '.join(Status.values)}."},
    )
    channel = serializers.CharField(required=False)
    to = serializers.CharField(required=False, help_text="The recipient as stored (normalised).")


class AnswerSerializer(FieldsBoundOnce, serializers.Serializer):
    """The shape of an answer: read-only, its fields bound once per class (FieldsBoundOnce)."""


class NotificationEventSerializer(AnswerSerializer):
    """One entry of a notification's status history: its acceptance, or an attempt."""

    status = serializers.ChoiceField(choices=Status.choices)
    at = serializers.DateTimeField(source="created_at")
    attempt = serializers.IntegerField()
    error = serializers.CharField()
    provider_message_id = serializers.CharField()
    dispatcher = serializers.CharField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    note = serializers.CharField()


class NotificationSerializer(AnswerSerializer):
    """A notification and its current status."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Status.choices)
    channel = serializers.CharField()
    to = serializers.CharField(source="recipient")
    subject = serializers.CharField()
    message = serializers.CharField()
    html = serializers.CharField(help_text="The HTML part (email), rendered from a template; empty otherwise.")
    template = serializers.CharField(help_text="The template it was rendered from, or empty.")
    template_version = serializers.IntegerField(allow_null=True)
    locale = serializers.CharField(help_text="The locale of the template variant used, or empty.")
    metadata = serializers.DictField()
    priority = serializers.ChoiceField(choices=[label for _, label in Priority.choices], source="get_priority_display")
    send_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    provider_message_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    sent_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, instance) -> dict:
        """The declared fields, read directly: DRF's generic walk looks up every source through
        get_attribute and inspects each callable's signature (get_priority_display), a fifth of
        an accepted request's CPU. tests/integration/notifications/test_api_intake.py checks
        that both give the same answer."""
        when = _DATETIME.to_representation
        return {
            "id": str(instance.id), "status": instance.status, "channel": instance.channel,
            "to": instance.recipient, "subject": instance.subject, "message": instance.message,
            "html": instance.html, "template": instance.template, "template_version": instance.template_version,
            "locale": instance.locale, "metadata": instance.metadata,
            "priority": PRIORITY_LABELS[instance.priority],
            "send_at": when(instance.send_at) if instance.send_at is not None else None,
            "expires_at": when(instance.expires_at) if instance.expires_at is not None else None,
            "attempts": instance.attempts, "last_error": instance.last_error,
            "provider_message_id": instance.provider_message_id,
            "created_at": when(instance.created_at), "updated_at": when(instance.updated_at),
            "sent_at": when(instance.sent_at) if instance.sent_at is not None else None,
        }


class NotificationDetailSerializer(NotificationSerializer):
    """A notification with its full status history."""

    events = NotificationEventSerializer(many=True)

    def to_representation(self, instance) -> dict:
        answer = super().to_representation(instance)
        events = self.fields["events"]
        answer["events"] = events.to_representation(events.get_attribute(instance))
        return answer


class BatchRequestSerializer(serializers.Serializer):
    """POST /api/v1/notifications/batch: {"notifications": [ ...up to 1,000 items... ]}.

    Every item is validated (fields, then its channel's checks) before anything is written;
    one bad item rejects the batch, and every item's errors are reported by index
    (notifications[3].to). One child serializer validates all items: building a serializer's
    fields per item would cost more than the rest of the validation.
    """

    notifications = NotificationRequestSerializer(many=True, min_length=1, max_length=1000)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({writable(name): ["Unknown field. Expected: notifications."] for name in unknown})
        return super().to_internal_value(data)["notifications"]
