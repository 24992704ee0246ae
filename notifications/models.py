"""The notification and its status history.

Pending delivery work lives apart, in the small `outbox` table (outbox.models), so that the
dispatchers' claim stays fast however many finished notifications accumulate here.
Table names are set explicitly: the delivery SQL in outbox/sql.py names them.
"""

from django.contrib.postgres.fields import ArrayField
from django.db import models

from .ids import new_notification_id


class Status(models.TextChoices):
    SCHEDULED = "scheduled"  # waiting for its send_at
    QUEUED = "queued"
    SENDING = "sending"  # a dispatcher has started the send
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider's receipt: it reached the recipient
    UNDELIVERED = "undelivered"  # the provider's receipt: accepted, then not delivered (a bounce)
    RETRYING = "retrying"
    FAILED = "failed"
    SUPPRESSED = "suppressed"  # its recipient is on the client's suppression list: never sent
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its expires_at passed before it could be sent

    # Which statuses each action applies to: the one definition. The services' messages quote
    # it, and outbox/store.py passes it to the CANCEL and RESEND statements of outbox/sql.py.
    @classmethod
    def cancellable(cls) -> list[str]:
        """Not sent yet, nor being sent: a cancel removes its outbox row (until START)."""
        return [cls.SCHEDULED, cls.QUEUED, cls.RETRYING]

    @classmethod
    def resendable(cls) -> list[str]:
        """Finished with a send, or with its last attempt: a resend queues it again."""
        return [cls.SENT, cls.DELIVERED, cls.UNDELIVERED, cls.FAILED]


class Priority(models.IntegerChoices):
    """Claim order among due rows: lower first."""

    HIGH = 0, "high"
    NORMAL = 1, "normal"
    LOW = 2, "low"


class ApiClient(models.Model):
    """An application that calls the API. Its notifications are visible to it alone."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "api_client"

    # DRF treats the authenticated principal as request.user.
    is_authenticated = True

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """A bearer key of a client, stored as its SHA-256 (keys are random, 192 bits, so a fast
    hash is enough: there is nothing to brute-force). `prefix` identifies a key in lists."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="keys")
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_default=models.functions.Now())
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_key"
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.client})"


class Notification(models.Model):
    """One message to one recipient over one channel."""

    id = models.UUIDField(primary_key=True, default=new_notification_id, editable=False)
    # No index of its own (notification_client_idx leads with it) and no constraint in the
    # database: the intake writes the authenticated client's id, and deleting a client with
    # notifications is refused by the ORM (PROTECT). The index and the per-row check of the
    # constraint cost a batch intake 10% of its SQL time (store-level, 1,000 per statement).
    client = models.ForeignKey(ApiClient, on_delete=models.PROTECT, related_name="+", db_index=False,
                               db_constraint=False)
    channel = models.CharField(max_length=100)
    recipient = models.CharField(max_length=512)
    subject = models.CharField(max_length=998, blank=True, default="")
    message = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(db_default=models.functions.Now())
    updated_at = models.DateTimeField(db_default=models.functions.Now())
    sent_at = models.DateTimeField(null=True, blank=True)
    priority = models.SmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    send_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Rendered from a template (notifications.message_templates): its HTML part (email), and
    # the template's name, version and the locale of the variant used. What was rendered is
    # stored here at acceptance, so the history shows what was sent whatever the template becomes.
    html = models.TextField(blank=True, default="", db_default="")
    template = models.CharField(max_length=100, blank=True, default="", db_default="")
    template_version = models.PositiveIntegerField(null=True, blank=True)
    locale = models.CharField(max_length=35, blank=True, default="", db_default="")
    # Whether its status changes become status events for its client's webhooks: its client had
    # a webhook endpoint when it was accepted (the triggers of migration 0004).
    reports_status = models.BooleanField(default=False, db_default=False)

    class Meta:
        db_table = "notification"
        indexes = [
            # Every listing is one client's, newest first.
            models.Index(fields=["client", "-created_at"], name="notification_client_idx"),
            models.Index(fields=["client", "recipient", "-created_at"], name="notification_recipient_idx"),
            models.Index(fields=["created_at"], name="notification_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} to {self.recipient} ({self.status})"


class NotificationEvent(models.Model):
    """One entry in a notification's status history: its acceptance and every attempt."""

    # No foreign key constraint in the database (db_constraint=False; the index stays): the
    # statements of outbox/sql.py write an event with or after its notification, and retention
    # deletes them together (notifications.housekeeping). The constraint's check, a lookup and a
    # lock of the notification per event written, cost every delivery ~10% of its SQL time.
    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="events",
                                     db_constraint=False)
    status = models.CharField(max_length=16, choices=Status.choices)
    attempt = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    dispatcher = models.CharField(max_length=255, blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, default="")  # what happened, for people (cancel, resend, expiry)
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "notification_event"
        ordering = ["created_at", "id"]
        indexes = [
            # Receipts find their notification by the provider's message id of its 'sent' event
            # (outbox/sql.py, APPLY_RECEIPTS). On the history, not on the notification: an index
            # on notification.provider_message_id would make RECORD's update of it a non-HOT
            # one, with an entry in every index of the notification (10% of a no-op drain).
            models.Index(fields=["provider_message_id"], name="event_provider_message_idx",
                         condition=~models.Q(provider_message_id="")),
        ]

    def __str__(self) -> str:
        return f"{self.status} (attempt {self.attempt})"


class IdempotencyKey(models.Model):
    """A client's Idempotency-Key and the notifications its first request created.

    The unique constraint on (client, key) is what makes a retry, or two identical requests
    racing on two API processes, create the notifications once (outbox/sql.py, TAKE_IDEMPOTENCY_KEY).
    """

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    notification_ids = ArrayField(models.UUIDField())
    created_at = models.DateTimeField(db_default=models.functions.Now())
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "idempotency_key"
        constraints = [models.UniqueConstraint(fields=["client", "key"], name="idempotency_key_unique")]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_key_expires_idx")]


# The client that owns the deliveries of status webhooks (the triggers of migration 0004):
# internal notifications, which no API key can see. Created by the trigger when first needed.
STATUS_WEBHOOKS_CLIENT_ID = 0
# The channel that delivers them is channels.registry.STATUS_WEBHOOKS_CHANNEL.


class Suppression(models.Model):
    """A recipient a client no longer sends to over one kind of channel: it bounced for good,
    complained, unsubscribed or opted out, or the provider says it is gone. A notification to
    it ends `suppressed` at intake without calling the provider, unless the request sets
    `ignore_suppression` (outbox/sql.py, ENQUEUE)."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=50)  # the channel kind: email, sms, slack, ...
    recipient = models.CharField(max_length=512)
    reason = models.TextField()
    # The notification whose outcome or receipt added it (None: added by hand, or deleted since).
    notification_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "suppression"
        constraints = [models.UniqueConstraint(fields=["client", "kind", "recipient"], name="suppression_unique")]

    def __str__(self) -> str:
        return f"{self.kind} {self.recipient} ({self.client})"


class Receipt(models.Model):
    """What a provider reported after accepting a message (a delivery receipt, a bounce, an
    open), as received. Matched to its notification by the provider's message id; one that
    matches nothing yet (it came before our own record of the send) waits here and is
    applied when the send is recorded (outbox/sql.py, APPLY_RECEIPTS)."""

    source = models.CharField(max_length=100)  # "twilio:<channel>", "anymail:<ESP>"
    kind = models.CharField(max_length=50)  # the channel kind it is about, for suppressions
    provider_message_id = models.CharField(max_length=255)
    # What it means for the notification: delivered, undelivered, or info (history only).
    outcome = models.CharField(max_length=16)
    provider_status = models.CharField(max_length=100)
    error_code = models.CharField(max_length=100, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    suppress_reason = models.TextField(blank=True, default="")
    occurred_at = models.DateTimeField(null=True, blank=True)  # the provider's time, if it says
    received_at = models.DateTimeField(db_default=models.functions.Now())
    # The same callback twice has the same key: the second changes nothing.
    dedupe_key = models.CharField(max_length=64, unique=True)
    notification_id = models.UUIDField(null=True, blank=True)  # set once applied
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "receipt"
        indexes = [
            # The receipts still waiting for their notification (APPLY_PENDING_RECEIPTS).
            models.Index(fields=["provider_message_id"], name="receipt_pending_idx",
                         condition=models.Q(applied_at__isnull=True)),
            models.Index(fields=["received_at"], name="receipt_received_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.provider_message_id}: {self.provider_status}"


class StatusEvent(models.Model):
    """A status change of a notification of a client that has a webhook endpoint, as its
    webhooks receive it and `GET /api/v1/events` lists it. Written by triggers on the
    notification table in the same transaction as the change (the migration
    notifications 0004), so none is missed and none is invented. `sequence` numbers a
    notification's events 1, 2, 3... in order."""

    id = models.UUIDField(primary_key=True)
    # No foreign keys in the database: the trigger writes these from the notification row
    # itself, and the retention deletes them with it; a constraint would only add a check per
    # row to every status change.
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="status_events",
                                     db_constraint=False)
    sequence = models.PositiveIntegerField()
    type = models.CharField(max_length=16)  # accepted, sent, delivered, ...
    payload = models.JSONField()  # the webhook's body, exactly
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "status_event"
        constraints = [models.UniqueConstraint(fields=["notification", "sequence"], name="status_event_sequence_unique")]
        indexes = [models.Index(fields=["client", "created_at", "id"], name="status_event_client_idx")]

    def __str__(self) -> str:
        return f"{self.type} #{self.sequence} of {self.notification_id}"


class WebhookEndpoint(models.Model):
    """A URL of a client that receives its notifications' status events, signed with `secret`."""

    EVENT_TYPES = ["accepted", "sent", "delivered", "undelivered", "failed", "suppressed", "cancelled", "expired"]

    id = models.UUIDField(primary_key=True, default=new_notification_id, editable=False)
    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.CharField(max_length=2048)
    event_types = ArrayField(models.CharField(max_length=16))
    secret = models.CharField(max_length=100)
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "webhook_endpoint"
        indexes = [models.Index(fields=["client"], name="webhook_endpoint_client_idx")]

    def __str__(self) -> str:
        return f"{self.url} ({self.client})"


class MessageTemplate(models.Model):
    """A client's named template: one notification type, rendered per channel
    (notifications.message_templates). Every change is a new version; deleting archives it
    (notifications that used it keep what was rendered)."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    current_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(db_default=models.functions.Now())
    updated_at = models.DateTimeField(db_default=models.functions.Now())
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "message_template"
        constraints = [models.UniqueConstraint(fields=["client", "name"], name="message_template_unique")]

    def __str__(self) -> str:
        return f"{self.name} v{self.current_version} ({self.client})"


class MessageTemplateVersion(models.Model):
    """One version of a template, as saved: never changed afterwards."""

    template = models.ForeignKey(MessageTemplate, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    locale = models.CharField(max_length=35)  # the locale of `variants`, the default
    variants = models.JSONField()  # {kind or channel name: {"subject", "text", "html"}}
    translations = models.JSONField(default=dict, blank=True)  # {locale: variants}
    sample_data = models.JSONField(null=True, blank=True)  # checked against when saved
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "message_template_version"
        constraints = [models.UniqueConstraint(fields=["template", "version"], name="message_template_version_unique")]
        ordering = ["template", "version"]

    def __str__(self) -> str:
        return f"{self.template.name} v{self.version}"


class ApiRateCounter(models.Model):
    """How much of NOTIFY_THROTTLE_RATE a client has used in the current window, counted for
    the whole fleet (notifications.throttling; the statements are outbox/sql.py's RATE_TAKE).

    A fixed window of `period` seconds, aligned to the epoch, counted in `shard` rows per
    client (NOTIFY_THROTTLE_SHARDS): a request adds to one shard and checks the sum of all.
    Each row is reused from window to window (`used` starts again from 0 when `window_start`
    moves on), so the table holds clients x shards rows, not one per window; housekeeping
    deletes the rows of clients idle for a day.

    Unlogged (migration 0010): no WAL for a counter updated by every request, and a request
    that writes only this table (a GET) commits without waiting for a WAL flush. After a
    crash of PostgreSQL the table is empty: the current window counts from zero again.
    """

    pk = models.CompositePrimaryKey("client_id", "shard")
    # The client's id, without a foreign key: the counter is written by the intake's statement
    # for the authenticated client; a deleted client's rows go with the next pruning.
    client_id = models.BigIntegerField()
    shard = models.SmallIntegerField()
    window_start = models.DateTimeField()
    period = models.IntegerField()  # the window's length in seconds (the rate's unit)
    used = models.IntegerField()  # requests and notifications counted in this window

    class Meta:
        db_table = "api_rate_counter"

    def __str__(self) -> str:
        return f"client {self.client_id} shard {self.shard}: {self.used} since {self.window_start}"
