"""The notification and its status history.

Pending delivery work lives apart, in the small `outbox` table (outbox.models), so that the
dispatchers' claim stays fast however many finished notifications accumulate here.
Table names are set explicitly: the delivery SQL in outbox/sql.py names them.
"""

from django.db import models

from .ids import new_notification_id


class Status(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"


class Notification(models.Model):
    """One message to one recipient over one channel."""

    id = models.UUIDField(primary_key=True, default=new_notification_id, editable=False)
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

    class Meta:
        db_table = "notification"
        indexes = [
            models.Index(fields=["-created_at"], name="notification_created_idx"),
            models.Index(fields=["recipient", "-created_at"], name="notification_recipient_idx"),
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
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "notification_event"
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.status} (attempt {self.attempt})"
