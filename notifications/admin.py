"""The admin: what was sent, to whom, every attempt; clients and their API keys; templates."""

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.forms.fields import InvalidJSONInput
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from channels.registry import STATUS_WEBHOOKS_CHANNEL, all_channels

from . import message_templates, rendering, services, template_store
from .admin_stats import stats_view
from .auth import api_key_create
from .errors import InvalidNotification, NotificationError
from .models import (
    ApiClient,
    ApiKey,
    MessageTemplate,
    MessageTemplateVersion,
    Notification,
    NotificationEvent,
    Receipt,
    StatusEvent,
    Suppression,
    WebhookEndpoint,
)
from .serializers import jsonb_problem

# A link to the statistics page on the admin's home page (unless a project template replaced it).
if admin.site.index_template is None:
    admin.site.index_template = "admin/notifications/index.html"


class NotificationEventInline(admin.TabularInline):
    model = NotificationEvent
    fields = ["created_at", "status", "attempt", "error", "provider_message_id", "dispatcher", "next_attempt_at", "note"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["created_at", "id"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "status", "channel", "recipient", "attempts", "created_at", "sent_at"]
    list_filter = ["status", "channel", "created_at"]
    search_fields = ["=id", "recipient", "=provider_message_id"]
    date_hierarchy = "created_at"
    # Every field, read-only, with the message as its channel sends it after the message itself,
    # and the metadata without secrets (a status webhook's delivery carries its signing secret).
    readonly_fields = [name for f in Notification._meta.fields
                       for name in ([f.name, "rendered_message"] if f.name == "message"
                                    else ["metadata_shown"] if f.name == "metadata" else [f.name])]
    inlines = [NotificationEventInline]
    show_full_result_count = False  # no COUNT(*) over the whole history on every page
    actions = ["resend_selected", "cancel_selected"]

    def has_add_permission(self, request) -> bool:
        return False  # notifications come in through the API

    def get_urls(self):
        # The statistics page (notifications.admin_stats), behind the admin's login.
        stats = self.admin_site.admin_view(lambda request: stats_view(self, request))
        return [path("stats/", stats, name="notifications_notification_stats"), *super().get_urls()]

    @admin.display(description="Rendered message")
    def rendered_message(self, obj: Notification) -> str:
        """The subject and body as the channel sends them (escaped)."""
        if obj is None or obj.pk is None:
            return "-"
        headline, text = rendering.rendered_message(obj)
        return format_html('<div class="help">{}</div><pre style="white-space: pre-wrap; margin: 0.3em 0 0;">{}</pre>', headline, text)

    @admin.display(description="Metadata")
    def metadata_shown(self, obj: Notification) -> dict:
        return {key: "(hidden)" if key == "signing_secret" else value for key, value in (obj.metadata or {}).items()}

    # Actions change notifications, so they need the change permission (which edits no field
    # here: every field is read-only); Django hides them from, and refuses them to, other users.
    @admin.action(description="Resend selected notifications", permissions=["change"])
    def resend_selected(self, request, queryset):
        self._apply(request, queryset, services.notification_resend, "resent")

    @admin.action(description="Cancel selected notifications", permissions=["change"])
    def cancel_selected(self, request, queryset):
        self._apply(request, queryset, services.notification_cancel, "cancelled")

    def _apply(self, request, queryset, action, done: str) -> None:
        """Run the API's own service on each selected notification; report what it refused."""
        succeeded, refused = 0, []
        for notification in queryset.only("id", "client_id"):
            try:
                action(notification_id=notification.id, client_id=notification.client_id, by=f"admin {request.user}")
                succeeded += 1
            except NotificationError as exc:  # not found, or a status the action does not apply to
                refused.append(exc.message)
        if succeeded:
            self.message_user(request, f"{succeeded} notification(s) {done}.", messages.SUCCESS)
        for reason in refused[:20]:
            self.message_user(request, reason, messages.WARNING)


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ["prefix", "created_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # keys are made with the "Create a new API key" action, which shows them once


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [ApiKeyInline]
    actions = ["create_key", "revoke_keys"]

    @admin.action(description="Create a new API key (shown once)", permissions=["change"])
    def create_key(self, request, queryset):
        """Show the new keys on a page of their own, once: never in a message (which travels in
        a cookie or the session), a log line or a cache."""
        new_keys = [(client, api_key_create(client=client)[1]) for client in queryset.order_by("name", "pk")]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "New API keys",
            "new_keys": new_keys,
        }
        response = TemplateResponse(request, "admin/notifications/apiclient/new_keys.html", context)
        add_never_cache_headers(response)  # Cache-Control: no-store, private, ...
        return response

    @admin.action(description="Revoke all API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = 0
        for key in ApiKey.objects.filter(client__in=queryset, revoked_at__isnull=True):
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
            revoked += 1
        self.message_user(request, f"{revoked} key(s) revoked.", messages.SUCCESS)


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """Recipients a client no longer sends to; delete an entry to send to it again."""

    list_display = ["recipient", "kind", "client", "reason", "created_at", "notification_id"]
    list_filter = ["kind", "client"]
    search_fields = ["recipient", "=notification_id"]
    fields = ["client", "kind", "recipient", "reason", "notification_id", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Receipt)
class ReceiptAdmin(admin.ModelAdmin):
    """Providers' receipts as they came; `notification id` empty: not matched (yet)."""

    list_display = ["received_at", "source", "provider_message_id", "provider_status", "outcome", "error_code",
                    "notification_id"]
    list_filter = ["source", "outcome"]
    search_fields = ["=provider_message_id", "=notification_id"]
    readonly_fields = [f.name for f in Receipt._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """The clients' status webhook endpoints (their secrets are never shown)."""

    list_display = ["url", "client", "event_types", "created_at"]
    list_filter = ["client"]
    fields = ["id", "client", "url", "event_types", "created_at"]
    readonly_fields = ["id", "client", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False  # through the API, which shows the secret once


@admin.register(StatusEvent)
class StatusEventAdmin(admin.ModelAdmin):
    """The clients' status events, as their webhooks receive them."""

    list_display = ["created_at", "type", "sequence", "notification_id", "client"]
    list_filter = ["type", "client"]
    search_fields = ["=id", "=notification__id"]
    readonly_fields = ["id", "client", "notification", "sequence", "type", "payload", "created_at"]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# --- message templates ------------------------------------------------------------------------------


class JSONTextField(forms.JSONField):
    """JSON in a textarea, indented for people to edit."""

    widget = forms.Textarea(attrs={"rows": 14, "cols": 100, "class": "vLargeTextField", "spellcheck": "false"})

    def prepare_value(self, value):
        if isinstance(value, InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)

    def validate(self, value):
        super().validate(value)
        problem = jsonb_problem(value)  # what the database cannot store (NUL, lone surrogates, NaN)
        if problem:
            raise forms.ValidationError(problem)


class MessageTemplateForm(forms.ModelForm):
    """A template's content, edited as JSON: saving makes it the next version (template_update
    checks it as the API does); the versions before it stay as they were."""

    locale = forms.CharField(max_length=35, help_text="The default locale: that of the variants (en, de, de-AT).")
    variants = JSONTextField(help_text='{"email": {"subject", "text", "html"}, "sms": {"text"}, "<channel name>": {...}}')
    translations = JSONTextField(required=False, help_text='Other locales: {"de": {"email": {...}}}.')
    sample_data = JSONTextField(required=False, help_text="Variables every variant must render with (optional).")

    class Meta:
        model = MessageTemplate
        fields: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            current = self.instance.versions.get(version=self.instance.current_version)
            for name in ("locale", "variants", "translations", "sample_data"):
                self.initial.setdefault(name, getattr(current, name))

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        for name in ("translations", "sample_data"):
            if cleaned.get(name) is not None and not isinstance(cleaned[name], dict):
                self.add_error(name, "Must be a JSON object (or empty).")
                return cleaned
        self.content = template_store.TemplateContent(
            locale=cleaned["locale"], variants=cleaned["variants"], translations=cleaned.get("translations") or {},
            sample_data=cleaned.get("sample_data"))
        try:
            template_store.check_content(self.content)
        except InvalidNotification as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return cleaned


class TemplatePreviewForm(forms.Form):
    """What the admin's preview renders: as POST /api/v1/templates/{name}/preview does."""

    channel = forms.ChoiceField()
    version = forms.TypedChoiceField(coerce=int)
    locale = forms.CharField(required=False, max_length=35, help_text="Optional: de-AT tries de-AT, then de, "
                                                                      "then the default.")
    data_json = JSONTextField(label="Data", required=False, help_text="The variables, as a JSON object.")

    def __init__(self, *args, template: MessageTemplate, versions: list[MessageTemplateVersion], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["channel"].choices = [(name, f"{name} ({channel.kind})") for name, channel
                                          in sorted(all_channels().items()) if name != STATUS_WEBHOOKS_CHANNEL]
        self.fields["version"].choices = [(v.version, f"v{v.version}") for v in reversed(versions)]
        self.fields["data_json"].widget.attrs["rows"] = 6
        current = next((v for v in versions if v.version == template.current_version), None)
        self.initial.setdefault("version", template.current_version)
        self.initial.setdefault("data_json", (current.sample_data if current else None) or {})

    def clean_data_json(self):
        value = self.cleaned_data["data_json"]
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Must be a JSON object.")
        return value


# The preview's HTML runs in a sandboxed iframe (no scripts, no forms, no same-origin) that loads
# nothing from the network either: a template's remote images or styles would tell their server
# that a member of staff looked.
PREVIEW_CSP = ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
               "style-src 'unsafe-inline'; img-src data:\">")
VERSIONS_SHOWN = 20  # the last this many versions, side by side


class ArchivedFilter(admin.SimpleListFilter):
    title = "archived"
    parameter_name = "archived"

    def lookups(self, request, model_admin):
        return [("no", "No"), ("yes", "Yes")]

    def queryset(self, request, queryset):
        if self.value() in ("no", "yes"):
            return queryset.filter(archived_at__isnull=self.value() == "no")
        return queryset


@admin.register(MessageTemplate)
class MessageTemplateAdmin(admin.ModelAdmin):
    """The clients' templates. Saving the change page makes a new version (through
    template_store.template_update, as PUT /api/v1/templates/{name} does); its versions are
    shown side by side, and a preview renders one for a channel without sending anything."""

    list_display = ["name", "client", "current_version", "archived", "updated_at"]
    list_filter = [ArchivedFilter, "client"]
    search_fields = ["name"]
    list_select_related = ["client"]
    form = MessageTemplateForm
    readonly_fields = ["name", "client", "current_version", "created_at", "updated_at", "archived_at"]
    fieldsets = [
        (None, {"fields": ["name", "client", "current_version", "created_at", "updated_at", "archived_at"]}),
        ("Content: saving makes it a new version", {
            "fields": ["locale", "variants", "translations", "sample_data"],
            "description": "The current version's content. Saving it changed makes it the next version (the earlier "
                           "ones stay, and notifications keep what was rendered for them); an archived template "
                           "comes back.",
        }),
    ]
    change_form_template = "admin/notifications/messagetemplate/change_form.html"
    actions = ["archive_selected"]

    def has_add_permission(self, request) -> bool:
        return False  # clients create their templates through the API

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # archived instead (the action): every version stays readable

    @admin.display(boolean=True, ordering="archived_at")
    def archived(self, obj: MessageTemplate) -> bool:
        return obj.archived_at is not None

    def get_urls(self):
        def view(method):
            return self.admin_site.admin_view(lambda request, object_id: method(request, object_id))

        return [
            path("<path:object_id>/versions/", view(self.versions_view), name="notifications_messagetemplate_versions"),
            path("<path:object_id>/preview/", view(self.preview_view), name="notifications_messagetemplate_preview"),
            *super().get_urls(),
        ]

    def save_model(self, request, obj, form, change):
        if not form.has_changed():
            self.message_user(request, "Nothing changed: no new version was saved.", messages.INFO)
            return
        version = template_store.template_update(client=obj.client, name=obj.name, content=form.content)
        obj.refresh_from_db()
        self.message_user(request, f"Saved as version {version.version}.", messages.SUCCESS)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        template = self.get_object(request, unquote(object_id))
        context = {**(extra_context or {})}
        if template is not None:
            versions = self._versions(template)
            context["versions_table"] = versions_table(versions)
            context["preview_form"] = TemplatePreviewForm(template=template, versions=versions)
            context["versions_shown"] = VERSIONS_SHOWN
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.action(description="Archive selected templates", permissions=["change"])
    def archive_selected(self, request, queryset):
        archived = 0
        for template in queryset.filter(archived_at__isnull=True).select_related("client"):
            template_store.template_archive(client=template.client, name=template.name)
            archived += 1
        self.message_user(request, f"{archived} template(s) archived.", messages.SUCCESS)

    def versions_view(self, request, object_id):
        template = self._template_or_404(request, object_id)
        versions = self._versions(template)
        return self._page(request, template, "versions.html", f"Versions of {template.name}",
                          versions_table=versions_table(versions))

    def preview_view(self, request, object_id):
        template = self._template_or_404(request, object_id)
        versions = self._versions(template)
        form = TemplatePreviewForm(request.POST or None, template=template, versions=versions)
        rendered, problem = None, None
        if request.method == "POST" and form.is_valid():
            version = next(v for v in versions if v.version == form.cleaned_data["version"])
            try:
                rendered = template_store.template_preview(
                    version=version, channel=services.channel_get(name=form.cleaned_data["channel"]),
                    locale=form.cleaned_data["locale"] or None, data=form.cleaned_data["data_json"])
            except InvalidNotification as exc:
                problem = f"{exc.field}: {exc.message}"
        return self._page(request, template, "preview.html", f"Preview of {template.name}", form=form,
                          rendered=rendered, problem=problem,
                          srcdoc=PREVIEW_CSP + rendered.html if rendered and rendered.html else "")

    def _template_or_404(self, request, object_id) -> MessageTemplate:
        template = self.get_object(request, unquote(object_id))
        if template is None:
            raise Http404("No such template.")
        if not self.has_view_permission(request, template):
            raise PermissionDenied
        return template

    def _versions(self, template: MessageTemplate) -> list[MessageTemplateVersion]:
        """The last VERSIONS_SHOWN versions, oldest first (each knowing its template)."""
        versions = list(template.versions.order_by("-version")[:VERSIONS_SHOWN])[::-1]
        for version in versions:
            version.template = template
        return versions

    def _page(self, request, template: MessageTemplate, page: str, title: str, **context) -> TemplateResponse:
        return TemplateResponse(request, f"admin/notifications/messagetemplate/{page}", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "original": template,
            "title": title, "versions_shown": VERSIONS_SHOWN, **context,
        })


def versions_table(versions: list[MessageTemplateVersion]) -> dict:
    """Versions side by side: one column per version (oldest first), one row per locale,
    variant and field, each cell marked `changed` where it differs from the version before."""
    def cells_of(version: MessageTemplateVersion) -> dict[tuple[str, str, str], str]:
        by_locale = {version.locale: version.variants, **(version.translations or {})}
        cells = {("", "", "default locale"): version.locale,
                 ("", "", "sample data"): json.dumps(version.sample_data, ensure_ascii=False, indent=1)
                 if version.sample_data is not None else None}
        for locale, variants in by_locale.items():
            for key, variant in (variants or {}).items():
                for field, source in (variant or {}).items():
                    cells[(locale, key, field)] = source
        return cells

    columns = [cells_of(version) for version in versions]
    order = {field: index for index, field in enumerate(message_templates.FIELDS)}
    default = versions[-1].locale if versions else ""
    keys = sorted({key for cells in columns for key in cells},  # the version's own rows, its default locale, others
                  key=lambda k: (k[0] != "", k[0] != default, k[0], k[1], order.get(k[2], -1), k[2]))
    rows = []
    for key in keys:
        values = [cells.get(key) for cells in columns]
        rows.append({"locale": key[0], "variant": key[1], "field": key[2], "cells": [
            {"value": value, "changed": index > 0 and value != values[index - 1]} for index, value in enumerate(values)]})
    return {"versions": versions, "rows": rows}
