"""The calling client's message templates: one notification type, rendered per channel.

    POST   /api/v1/templates                          create one, at version 1 (201; 409: the name is taken)
    GET    /api/v1/templates                          the client's templates, newest first (archived ones
                                                      with ?archived=true)
    GET    /api/v1/templates/{name}                   a template and its current version
    PUT    /api/v1/templates/{name}                   save a new version (200; an archived template comes back)
    DELETE /api/v1/templates/{name}                   archive it (204): no new notification may use it
    GET    /api/v1/templates/{name}/versions          every version, oldest first
    GET    /api/v1/templates/{name}/versions/{n}      one version
    POST   /api/v1/templates/{name}/preview           render it for a channel, as the intake would; sends
                                                      and writes nothing

The rules of a template's content are notifications.message_templates'; the saving and the
rendering are notifications.template_store's, which the admin calls too. Notifications keep what
was rendered at their acceptance, whatever happens to the template afterwards. Another client's
template answers 404, as does a name that cannot be a template's.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from . import message_templates, services, template_store
from .models import MessageTemplate, MessageTemplateVersion
from .openapi import ErrorSerializer, errors, page_of
from .serializers import AnswerSerializer, QueryParameters, StrictCharField, jsonb_problem, writable
from .views import NewestFirst, OldestFirst

# --- shapes ---------------------------------------------------------------------------------------

VARIANT_SCHEMA = {
    "type": "object",
    "properties": {field: {"type": "string"} for field in message_templates.FIELDS},
    "required": ["text"],
    "additionalProperties": False,
    "description": "Jinja2 templates (sandboxed): `subject` (email), `text` (every channel), `html` (email; "
                   "escaped automatically).",
}
VARIANTS_SCHEMA = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": VARIANT_SCHEMA,
    "description": "By channel kind (email, sms, slack, webhook) or by a channel's name, which wins over its kind.",
}
TRANSLATIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": VARIANTS_SCHEMA,
    "description": "Other locales' variants, by language tag (de, de-AT). A notification's locale de-AT takes "
                   "de-AT, then de, then the template's default locale.",
}


@extend_schema_field(VARIANTS_SCHEMA, component_name="TemplateVariants")
class VariantsField(serializers.DictField):
    """An object; its variants are checked by template_store.check_content."""


@extend_schema_field(TRANSLATIONS_SCHEMA, component_name="TemplateTranslations")
class TranslationsField(serializers.DictField):
    """An object; its locales and variants are checked by template_store.check_content."""


class _StrictObject(serializers.Serializer):
    """A request body whose unknown fields are refused (400 naming each), whose objects jsonb
    can store (no NUL, no lone surrogate, not too deep: 400, not 500)."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            expected = ", ".join(self.fields)
            raise serializers.ValidationError({writable(name): [f"Unknown field. Expected: {expected}."]
                                               for name in unknown})
        value = super().to_internal_value(data)
        problems = {name: [problem] for name, item in value.items()
                    if isinstance(item, dict) and (problem := jsonb_problem(item))}
        if problems:
            raise serializers.ValidationError(problems)
        return value


class TemplateContentSerializer(_StrictObject):
    """PUT /api/v1/templates/{name}: a new version's content."""

    locale = StrictCharField(required=False, default="en", max_length=35, trim_whitespace=False,
                             help_text="The locale of `variants`, the default (a language tag: en, de, de-AT). "
                                       "Default en.")
    variants = VariantsField()
    translations = TranslationsField(required=False, default=dict)
    sample_data = serializers.DictField(
        required=False, allow_null=True, default=None,
        help_text="Variables every variant must render with when saved, within its channels' limits (an SMS: "
                  "1,600 characters): a template that does not is refused (400, field sample_data).")

    def content(self) -> template_store.TemplateContent:
        data = self.validated_data
        return template_store.TemplateContent(locale=data["locale"], variants=data["variants"],
                                              translations=data["translations"], sample_data=data["sample_data"])


class TemplateCreateSerializer(TemplateContentSerializer):
    """POST /api/v1/templates: a new template."""

    name = StrictCharField(max_length=100, trim_whitespace=False,
                           help_text="Yours to choose, unique among your templates: 1 to 100 lower-case letters, "
                                     "digits, '.', '_' or '-', starting with a letter or digit.")

    def get_fields(self):  # name first, in the schema and in the "Expected: ..." of an unknown field
        fields = super().get_fields()
        return {"name": fields.pop("name"), **fields}


class TemplateSerializer(AnswerSerializer):
    """A template with its current version's content."""

    name = serializers.CharField(source="template.name")
    version = serializers.IntegerField(source="template.current_version", help_text="The current version.")
    locale = serializers.CharField()
    variants = VariantsField()
    translations = TranslationsField()
    sample_data = serializers.DictField(allow_null=True)
    created_at = serializers.DateTimeField(source="template.created_at")
    updated_at = serializers.DateTimeField(source="template.updated_at", help_text="When the current version was saved.")
    archived_at = serializers.DateTimeField(source="template.archived_at", allow_null=True,
                                            help_text="Archived (DELETE) since then: no new notification may use it.")


class TemplateVersionSerializer(AnswerSerializer):
    """One saved version, as it was saved."""

    name = serializers.CharField(source="template.name")
    version = serializers.IntegerField()
    locale = serializers.CharField()
    variants = VariantsField()
    translations = TranslationsField()
    sample_data = serializers.DictField(allow_null=True)
    created_at = serializers.DateTimeField(help_text="When this version was saved.")


class TemplateListQuerySerializer(QueryParameters):
    archived = serializers.ChoiceField(choices=["true", "false"], required=False,
                                       help_text="true: archived templates too. Default false.")


class PreviewRequestSerializer(_StrictObject):
    """POST /api/v1/templates/{name}/preview."""

    channel = StrictCharField(max_length=100, help_text="A configured channel: its variant is rendered.")
    data = serializers.DictField(required=False, default=dict, help_text="The template's variables.")
    locale = StrictCharField(required=False, default=None, max_length=35,
                             help_text="The locale to use (de-AT, then de, then the template's default).")
    template_version = serializers.IntegerField(required=False, default=None, min_value=1, max_value=2**31 - 1,
                                                help_text="The version to render; the current one if left out.")


class PreviewSerializer(AnswerSerializer):
    subject = serializers.CharField()
    text = serializers.CharField()
    html = serializers.CharField(help_text="Empty if the variant has none.")
    locale = serializers.CharField(help_text="The locale of the variant used.")
    variant = serializers.CharField(help_text="Its key: the channel's name or its kind.")
    template_version = serializers.IntegerField()


CONFLICT = {409: OpenApiResponse(ErrorSerializer, description="A template of that name exists already (PUT changes it).")}
NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description="No template of that name (or version) for this client.")}

# Each one, sent as it is in this order (the creations, then the change, then the previews of
# the first one), is accepted (tests/integration/notifications/test_api_schema.py).
ORDER_SHIPPED = {
    "name": "order-shipped",
    "locale": "en",
    "variants": {
        "email": {"subject": "Your order {{ order_id }} has shipped",
                  "text": "Hello {{ name }},\n\norder {{ order_id }} is on its way.",
                  "html": "<p>Hello {{ name }},</p><p>order <b>{{ order_id }}</b> is on its way.</p>"},
        "sms": {"text": "Order {{ order_id }} has shipped."},
    },
    "translations": {"de": {"email": {"subject": "Ihre Bestellung {{ order_id }} ist unterwegs",
                                      "text": "Hallo {{ name }},\n\nBestellung {{ order_id }} ist unterwegs."}}},
    "sample_data": {"name": "Ann", "order_id": "A-1001"},
}
CREATE_EXAMPLES = [
    OpenApiExample("Email (text and HTML), SMS, German", request_only=True, value=ORDER_SHIPPED),
    OpenApiExample("One variant for every channel of a kind", request_only=True, value={
        "name": "login-code", "variants": {"sms": {"text": "Your code is {{ code }}"}}}),
]
UPDATE_EXAMPLES = [
    OpenApiExample("A new version", request_only=True, value={
        **{key: value for key, value in ORDER_SHIPPED.items() if key != "name"},
        "variants": {**ORDER_SHIPPED["variants"], "sms-log": {"text": "[log] Order {{ order_id }} shipped."}},
    }),
]
PREVIEW_EXAMPLES = [
    OpenApiExample("Email", request_only=True, value={
        "channel": "email-log", "data": {"name": "Ann", "order_id": "A-1001"}}),
    OpenApiExample("Email, in German, version 1", request_only=True, value={
        "channel": "email-log", "locale": "de-AT", "template_version": 1, "data": {"name": "Ann", "order_id": "A-1001"}}),
    OpenApiExample("SMS", request_only=True, value={"channel": "sms-log", "data": {"order_id": "A-1001"}}),
    OpenApiExample("Rendered", response_only=True, status_codes=["200"], value={
        "subject": "Your order A-1001 has shipped", "text": "Hello Ann,\n\norder A-1001 is on its way.",
        "html": "<p>Hello Ann,</p><p>order <b>A-1001</b> is on its way.</p>", "locale": "en", "variant": "email",
        "template_version": 2}),
]


# --- reads ----------------------------------------------------------------------------------------


def _template(client, name: str) -> MessageTemplate:
    """The client's template `name`, archived or not; 404 otherwise (a name that cannot be a
    template's, e.g. with a NUL, is not looked up)."""
    found = (MessageTemplate.objects.filter(client=client, name=name).first()
             if template_store.NAME.fullmatch(name) else None)
    if found is None:
        raise NotFound(f"No template {name!r}.")
    return found


def _current(template: MessageTemplate) -> MessageTemplateVersion:
    version = template.versions.get(version=template.current_version)
    version.template = template
    return version


def _answer(version: MessageTemplateVersion, code: int = status.HTTP_200_OK, headers=None) -> Response:
    return Response(TemplateSerializer(version).data, status=code, headers=headers)


# --- views ----------------------------------------------------------------------------------------


class TemplateListView(APIView):
    """POST: create a template (201). GET: the client's templates, newest first."""

    @extend_schema(
        summary="Create a template", operation_id="templates_create",
        description="Version 1 of a new template. Its variants are checked when saved: Jinja2 syntax (the error "
                    "names the line), the sandbox's rules (no names starting with _), and, with `sample_data`, "
                    "that each variant renders with it within its channels' limits.",
        request=TemplateCreateSerializer,
        responses={201: TemplateSerializer, **errors(400, 401, 413, 415, 429), **CONFLICT},
        examples=CREATE_EXAMPLES,
    )
    def post(self, request):
        serializer = TemplateCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        name = serializer.validated_data["name"]
        version = template_store.template_create(client=request.user, name=name, content=serializer.content())
        location = reverse("template-detail", kwargs={"name": name}, request=request)
        return _answer(version, status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(
        summary="List templates, newest first", operation_id="templates_list",
        parameters=[TemplateListQuerySerializer],
        responses={200: page_of(TemplateSerializer), **errors(400, 401, 429)},
    )
    def get(self, request):
        query = TemplateListQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        templates = MessageTemplate.objects.filter(client=request.user)
        if query.validated_data.get("archived") != "true":
            templates = templates.filter(archived_at__isnull=True)
        paginator = NewestFirst()
        page = paginator.paginate_queryset(templates, request, view=self)
        current = {(v.template_id, v.version): v for v in MessageTemplateVersion.objects.filter(
            template__in=page, version__in={t.current_version for t in page})}
        versions = []
        for template in page:
            version = current[(template.pk, template.current_version)]
            version.template = template
            versions.append(version)
        return paginator.get_paginated_response(TemplateSerializer(versions, many=True).data)


class TemplateDetailView(APIView):
    """GET: a template. PUT: save a new version. DELETE: archive it."""

    @extend_schema(summary="A template and its current version", operation_id="templates_retrieve",
                   description="Archived templates too (see archived_at).",
                   responses={200: TemplateSerializer, **errors(401, 429), **NOT_FOUND})
    def get(self, request, name: str):
        return _answer(_current(_template(request.user, name)))

    @extend_schema(
        summary="Save a new version of a template", operation_id="templates_update",
        description="The content replaces the current version's as version n+1; earlier versions stay readable "
                    "and usable (template_version). An archived template comes back. Notifications already "
                    "accepted keep what was rendered for them.",
        request=TemplateContentSerializer,
        responses={200: TemplateSerializer, **errors(400, 401, 413, 415, 429), **NOT_FOUND},
        examples=UPDATE_EXAMPLES,
    )
    def put(self, request, name: str):
        _template(request.user, name)  # 404 before 400: the client learns first that the name is wrong
        serializer = TemplateContentSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = template_store.template_update(client=request.user, name=name, content=serializer.content())
        return _answer(version)

    @extend_schema(summary="Archive a template", operation_id="templates_destroy",
                   description="No new notification may use it (400, field template); notifications already "
                               "accepted keep their content and are sent. It stays readable (GET, "
                               "?archived=true); a PUT brings it back as a new version.",
                   responses={204: None, **errors(401, 429), **NOT_FOUND})
    def delete(self, request, name: str):
        template = _template(request.user, name)
        if template.archived_at is None:  # archived already: nothing to do (a repeated DELETE is answered alike)
            template_store.template_archive(client=request.user, name=template.name)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TemplateVersionListView(APIView):
    """GET: every version of a template, oldest first."""

    @extend_schema(summary="A template's versions, oldest first", operation_id="templates_versions_list",
                   parameters=[QueryParameters],
                   responses={200: page_of(TemplateVersionSerializer), **errors(400, 401, 429), **NOT_FOUND})
    def get(self, request, name: str):
        template = _template(request.user, name)
        query = QueryParameters(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        paginator = OldestFirst()
        page = paginator.paginate_queryset(template.versions.all(), request, view=self)
        for version in page:
            version.template = template
        return paginator.get_paginated_response(TemplateVersionSerializer(page, many=True).data)


class TemplateVersionDetailView(APIView):
    """GET: one version of a template."""

    @extend_schema(summary="One version of a template", operation_id="templates_versions_retrieve",
                   responses={200: TemplateVersionSerializer, **errors(401, 429), **NOT_FOUND})
    def get(self, request, name: str, version: int):
        template = _template(request.user, name)
        found = template.versions.filter(version=version).first()
        if found is None:
            raise NotFound(f"No version {version} of template {name!r}.")
        found.template = template
        return Response(TemplateVersionSerializer(found).data)


class TemplatePreviewView(APIView):
    """POST: render a template for a channel, as the intake would; nothing is sent or written."""

    @extend_schema(
        summary="Preview a template for a channel", operation_id="templates_preview",
        description="Renders the channel's variant (by locale, then the channel's name, then its kind) with `data`, "
                    "and checks it as POST /api/v1/notifications would: the same 400 answers (a missing variable "
                    "is named in `data`). Nothing is sent or stored. An archived template answers 404.",
        request=PreviewRequestSerializer,
        responses={200: PreviewSerializer, **errors(400, 401, 413, 415, 429), **NOT_FOUND},
        examples=PREVIEW_EXAMPLES,
    )
    def post(self, request, name: str):
        template = _template(request.user, name)
        query = PreviewRequestSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        wanted = query.validated_data
        version = template_store.template_version_get(client_id=request.user.pk, name=template.name,
                                                      version=wanted["template_version"])
        rendered = template_store.template_preview(version=version, channel=services.channel_get(name=wanted["channel"]),
                                                   locale=wanted["locale"], data=wanted["data"])
        return Response(PreviewSerializer({
            "subject": rendered.subject, "text": rendered.text, "html": rendered.html, "locale": rendered.locale,
            "variant": rendered.variant, "template_version": version.version,
        }).data)
