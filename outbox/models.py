"""The outbox: one row per notification still to be delivered, and nothing else.

A row is written in the same transaction as its notification, claimed by a dispatcher under a
lease, and deleted when the notification is sent or has failed for good. The table stays as
small as the backlog, so the claim's index scan stays short.
"""

from django.contrib.postgres.fields import ArrayField
from django.db import models


class OutboxEntry(models.Model):
    """Pending delivery of one notification.

    `run_at` is when the row is next claimable: now for new work, the backoff time for a retry,
    and the lease's end while a dispatcher holds it. One ordered index on (channel, priority,
    run_at) therefore serves new work, due retries and expired leases alike (outbox/sql.py, CLAIM).
    """

    # No foreign key constraint in the database, as for NotificationEvent.notification: ENQUEUE
    # and RESEND write the row with (or for) its notification, RECORD deletes it before any
    # notification can go; the unique index stays.
    notification = models.OneToOneField("notifications.Notification", on_delete=models.CASCADE, related_name="+",
                                        db_constraint=False)
    channel = models.CharField(max_length=100)
    run_at = models.DateTimeField(db_default=models.functions.Now())
    priority = models.SmallIntegerField(default=1)
    # Sends started (the dispatcher's START), not claims: a claim that never started a send
    # (the dispatcher died first, or the notification was cancelled) costs no attempt.
    attempts = models.PositiveIntegerField(default=0)
    # Whether the current lease holder has started the send. Until then a cancel wins.
    sending = models.BooleanField(default=False)
    locked_by = models.CharField(max_length=255, null=True, blank=True)
    # Fencing token of the current lease: an outcome is recorded only with the token of the
    # claim that produced it, so a dispatcher whose lease expired cannot overwrite a newer one.
    lease_token = models.UUIDField(null=True, blank=True)
    # Failover (channels.policy fallback): the channel the notification was accepted for, once
    # it has moved to another (NULL while it has not), and the attempts it had when it moved,
    # so that the attempts on its current channel are attempts - moved_at_attempt.
    origin = models.CharField(max_length=100, null=True, blank=True)
    moved_at_attempt = models.PositiveIntegerField(default=0, db_default=0)
    # The notification's recipient, for the per-recipient rate budget of the claim (a copy:
    # the claim must skip a busy recipient's rows while it scans the outbox).
    recipient = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "outbox"
        verbose_name_plural = "outbox"
        # Led by the channel, so that a backlog on one channel costs nothing to a claim for
        # another (a dispatcher serving other channels would otherwise scan past it).
        indexes = [models.Index(fields=["channel", "priority", "run_at", "id"], name="outbox_claim_idx")]

    def __str__(self) -> str:
        return f"outbox {self.id} for {self.notification_id}"


class Dispatcher(models.Model):
    """A dispatcher process, as its heartbeats describe it (outbox/heartbeat.py).

    Each process upserts its row every OUTBOX_HEARTBEAT_SECONDS with its counters and its
    problem (if it cannot record outcomes, and so claims nothing), and sets
    `stopped_at` when it stops gracefully. A row whose heartbeats stopped without `stopped_at`
    is a process that died (or lost the database): the admin shows it as gone.
    `last_heartbeat_at` is the database's clock, so that hosts with skewed clocks compare alike.
    """

    id = models.CharField(primary_key=True, max_length=255)  # host:pid:random, as in leases and history
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    channels = ArrayField(models.CharField(max_length=100), default=list)
    started_at = models.DateTimeField()
    last_heartbeat_at = models.DateTimeField(db_default=models.functions.Now())
    stopped_at = models.DateTimeField(null=True, blank=True)
    in_flight = models.PositiveIntegerField(default=0)
    sent = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    retried = models.BigIntegerField(default=0)
    # Why the process claims nothing at the moment (it cannot record outcomes), or "".
    problem = models.TextField(blank=True, default="", db_default="")

    class Meta:
        db_table = "dispatcher"
        indexes = [models.Index(fields=["last_heartbeat_at"], name="dispatcher_heartbeat_idx")]

    def __str__(self) -> str:
        return self.id


class ChannelState(models.Model):
    """What the whole fleet knows of a channel that has a policy (channels.policy): its rate
    budget and its circuit breaker. One row per such channel, shared by every dispatcher on
    every host; the claim reads and charges it under a row lock (outbox/sql.py, CLAIM), the
    recorder updates the breaker from outcomes (outbox/sql.py, CHANNEL_OUTCOMES).
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    channel = models.CharField(primary_key=True, max_length=100)
    # The rate budget: a token bucket, refilled from the database's clock at each claim.
    tokens = models.FloatField(default=0)
    refilled_at = models.DateTimeField(db_default=models.functions.Now())
    # A provider's Retry-After (a 429): nothing is claimed for the channel before this.
    paused_until = models.DateTimeField(null=True, blank=True)
    # The circuit breaker: consecutive transient failures; closed, open (no claim before
    # breaker_until) or half_open (one probe out, until breaker_until at the latest).
    failures = models.PositiveIntegerField(default=0)
    # Consecutive sends that got through: with a breaker, the fleet keeps at most this many
    # (at least one) of the channel's sends in flight, so that it ramps up after a failure.
    successes = models.PositiveIntegerField(default=0, db_default=0)
    breaker = models.CharField(max_length=10, default=CLOSED, db_default=CLOSED)
    breaker_until = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "channel_state"

    def __str__(self) -> str:
        return f"{self.channel}: {self.breaker}"


class RecipientBudget(models.Model):
    """The rate budget of one recipient of a channel with a recipient_rate_limit: a token
    bucket like ChannelState's, charged by the claim under the channel's row lock. A bucket
    left alone long enough is full again, and its row is deleted (outbox/sql.py)."""

    channel = models.CharField(max_length=100)
    recipient = models.TextField()
    tokens = models.FloatField()
    refilled_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "recipient_budget"
        constraints = [models.UniqueConstraint(fields=["channel", "recipient"], name="recipient_budget_unique")]
        indexes = [models.Index(fields=["refilled_at"], name="recipient_budget_refilled_idx")]


class ChannelKind(models.Model):
    """The kind (email, sms, ...) of every channel this service has been configured with, as
    the processes that served it last saw it: written by the migration that made this table,
    by `run_dispatchers` at start and by `manage.py unconfigured_channels`. Once a channel is
    removed from the channels file, this is what still says what its pending notifications
    are, so that they move only to a channel of the same kind (outbox.unconfigured)."""

    channel = models.CharField(primary_key=True, max_length=100)
    kind = models.CharField(max_length=50)
    backend = models.CharField(max_length=255)
    seen_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "channel_kind"

    def __str__(self) -> str:
        return f"{self.channel} ({self.kind})"
