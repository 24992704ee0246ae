from django.apps import AppConfig
from django.core import checks


class ChannelsConfig(AppConfig):
    name = "channels"
    label = "notify_channels"  # "channels" is the label of the Django Channels package
    verbose_name = "Channels"

    def ready(self) -> None:
        checks.register(check_channels)


def check_channels(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """`manage.py check` (and every command that runs checks) fails on a broken channel."""
    from .errors import ChannelConfigurationError
    from .registry import build_channels
    from django.conf import settings

    try:
        build_channels(settings.NOTIFICATION_CHANNELS)
    except ChannelConfigurationError as exc:
        return [checks.Error(str(exc), id="channels.E001")]
    return []
