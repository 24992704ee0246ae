"""The admin: what was sent, to whom, every attempt; clients and their API keys."""

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html

from . import rendering, services
from .admin_stats import stats_view
from .auth import api_key_create
from .errors import NotificationError
from .models import (
    ApiClient,
    ApiKey,
    Notification,
    NotificationEvent,
    Receipt,
    StatusEvent,
    Suppression,
    WebhookEndpoint,
)

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
