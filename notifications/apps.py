from django.apps import AppConfig
from django.core import checks


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # openapi registers the API-key security scheme; receipts receives Anymail's tracking signal.
        from . import openapi, receipts  # noqa: F401

        checks.register(check_throttle_rate)


def check_throttle_rate(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """`manage.py check` fails on a NOTIFY_THROTTLE_RATE that is not a rate, rather than the
    API's first request."""
    from django.core.exceptions import ImproperlyConfigured

    from .throttling import configured_rate

    try:
        configured_rate()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="notifications.E001")]
    return []
