"""The admin: what was sent, to whom, and every attempt."""

from django.contrib import admin

from .models import Notification, NotificationEvent


class NotificationEventInline(admin.TabularInline):
    model = NotificationEvent
    fields = ["created_at", "status", "attempt", "error", "provider_message_id", "dispatcher", "next_attempt_at"]
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
    readonly_fields = [f.name for f in Notification._meta.fields]
    inlines = [NotificationEventInline]
    show_full_result_count = False  # no COUNT(*) over the whole history on every page

    def has_add_permission(self, request) -> bool:
        return False  # notifications come in through the API
