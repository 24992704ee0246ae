"""What the notifications services refuse, in the domain's own terms.

notifications.services raises these and knows nothing of HTTP. The API answers each of them in
one place (notifications.api_errors); the admin shows their message. `str(error)` and
`error.message` are the message for people.
"""

from __future__ import annotations

import uuid


class NotificationError(Exception):
    """A request that the notifications domain refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotificationNotFound(NotificationError):
    """No such notification, or not one of this client's."""

    def __init__(self, notification_id: uuid.UUID | str) -> None:
        super().__init__(f"No notification {notification_id}.")
        self.notification_id = notification_id


class StatusConflict(NotificationError):
    """The action does not apply to the notification in its current status."""

    def __init__(self, notification_id: uuid.UUID | str, status: str, message: str) -> None:
        super().__init__(message)
        self.notification_id = notification_id
        self.status = str(status)


class InvalidNotification(NotificationError):
    """A notification that cannot be accepted, because of the value of `field`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class TemplateNotFound(NotificationError):
    """No such template (or version) for this client, or it is archived."""


class TemplateExists(NotificationError):
    """A template of that name exists already (PUT changes it)."""


class IdempotencyKeyReused(NotificationError):
    """An idempotency key already taken by a request with another body."""

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used with a different request body. "
            "Use a new key for a new request."
        )


class RateLimited(NotificationError):
    """The client has used its rate limit (NOTIFY_THROTTLE_RATE) for the current window:
    nothing was written; `retry_after` is the seconds to the window's end."""

    def __init__(self, *, retry_after: float, limit: int, period: int) -> None:
        super().__init__(f"Over the rate limit of {limit} per {period} s; retry in {retry_after:g} s.")
        self.retry_after = retry_after
        self.limit = limit
        self.period = period
