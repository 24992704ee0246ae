from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from . import openapi  # noqa: F401  (registers the API-key security scheme)
        from . import receipts  # noqa: F401  (receives Anymail's tracking signal)
