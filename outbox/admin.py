"""The admin's view of the delivery side: pending work (what is due when, who holds a lease
until when, and the channels no longer configured that still have some) and the dispatcher
processes (from their heartbeats)."""

from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import DurationField, ExpressionWrapper, F, Q
from django.db.models.functions import Now

from channels.registry import all_channels

from . import unconfigured
from .models import ChannelState, Dispatcher, OutboxEntry


@admin.register(OutboxEntry)
class OutboxEntryAdmin(admin.ModelAdmin):
    list_display = ["notification_id", "channel", "attempts", "run_at", "locked_by"]
    list_filter = ["channel"]
    search_fields = ["=notification__id", "locked_by"]
    ordering = ["run_at", "id"]
    readonly_fields = ["notification", "channel", "run_at", "attempts", "locked_by", "lease_token"]

    def changelist_view(self, request, extra_context=None):
        """The list, under a warning for each channel that has pending rows but is not
        configured (outbox.unconfigured): no dispatcher will ever send them."""
        for channel in unconfigured.find(all_channels()):
            messages.warning(request, channel.describe())
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request) -> bool:
        return False


# --- dispatchers ------------------------------------------------------------------------------

RUNNING, STOPPED, GONE, STALLED = "running", "stopped", "gone", "cannot record"
# A dispatcher that missed this many heartbeats in a row (and did not say it stopped) is gone.
GONE_AFTER_HEARTBEATS = 3


def gone_after() -> timedelta:
    return timedelta(seconds=GONE_AFTER_HEARTBEATS * float(settings.OUTBOX["HEARTBEAT_SECONDS"]))


def dispatcher_state(dispatcher: Dispatcher, heartbeat_age: timedelta | None) -> str:
    """running / cannot record / stopped / gone; `heartbeat_age` is measured on the
    database's clock."""
    if dispatcher.stopped_at is not None:
        return STOPPED
    if heartbeat_age is not None and heartbeat_age > gone_after():
        return GONE
    return STALLED if dispatcher.problem else RUNNING


class DispatcherStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [(RUNNING, "running"), (STALLED, "cannot record"), (STOPPED, "stopped"), (GONE, "gone")]

    def queryset(self, request, queryset):
        silent = Q(last_heartbeat_at__lt=Now() - gone_after())
        if self.value() == STOPPED:
            return queryset.filter(stopped_at__isnull=False)
        if self.value() == GONE:
            return queryset.filter(silent, stopped_at__isnull=True)
        if self.value() == RUNNING:
            return queryset.filter(~silent, stopped_at__isnull=True, problem="")
        if self.value() == STALLED:
            return queryset.filter(~silent, stopped_at__isnull=True).exclude(problem="")
        return queryset


@admin.register(Dispatcher)
class DispatcherAdmin(admin.ModelAdmin):
    """Every dispatcher process that has sent a heartbeat. Read-only: the processes write it."""

    list_display = ["host", "pid", "channel_list", "started_at", "last_heartbeat_at", "state",
                    "in_flight", "sent", "failed", "retried"]
    list_filter = [DispatcherStateFilter, "host"]
    search_fields = ["id", "host", "=pid"]
    ordering = ["-last_heartbeat_at"]
    fields = ["id", "host", "pid", "channels", "started_at", "last_heartbeat_at", "stopped_at",
              "state", "problem", "in_flight", "sent", "failed", "retried"]
    readonly_fields = fields

    def get_queryset(self, request):
        # The heartbeat's age by the database's clock, which also wrote last_heartbeat_at.
        age = ExpressionWrapper(Now() - F("last_heartbeat_at"), output_field=DurationField())
        return super().get_queryset(request).annotate(heartbeat_age=age)

    @admin.display(description="state")
    def state(self, obj: Dispatcher) -> str:
        return dispatcher_state(obj, getattr(obj, "heartbeat_age", None))

    @admin.display(description="channels")
    def channel_list(self, obj: Dispatcher) -> str:
        return ", ".join(obj.channels)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # written by the dispatchers' heartbeats; deleting a stopped or gone row is allowed


@admin.register(ChannelState)
class ChannelStateAdmin(admin.ModelAdmin):
    """The fleet's state of each channel with a policy: its rate budget and circuit breaker.
    Read-only: the dispatchers write it."""

    list_display = ["channel", "breaker", "failures", "breaker_until", "paused_until", "tokens", "changed_at"]
    list_filter = ["breaker"]
    fields = ["channel", "breaker", "failures", "breaker_until", "paused_until", "tokens", "refilled_at", "changed_at"]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
