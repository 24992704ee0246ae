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
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"
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
        return [cls.SENT, cls.FAILED]


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
    client = models.ForeignKey(ApiClient, on_delete=models.PROTECT, related_name="+")
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

    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="events")
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
