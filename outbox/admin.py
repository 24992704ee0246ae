"""The admin's view of pending work: what is due when, and who holds a lease until when."""

from django.contrib import admin

from .models import OutboxEntry


@admin.register(OutboxEntry)
class OutboxEntryAdmin(admin.ModelAdmin):
    list_display = ["notification_id", "channel", "attempts", "run_at", "locked_by"]
    list_filter = ["channel"]
    search_fields = ["=notification__id", "locked_by"]
    ordering = ["run_at", "id"]
    readonly_fields = ["notification", "channel", "run_at", "attempts", "locked_by", "lease_token"]

    def has_add_permission(self, request) -> bool:
        return False
