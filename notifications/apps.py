from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # openapi registers the API-key security scheme; receipts receives Anymail's tracking signal.
        from . import openapi, receipts  # noqa: F401
