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
    from django.conf import settings

    from .errors import ChannelConfigurationError
    from .registry import build_channels

    problems = []
    for name, entry in settings.NOTIFICATION_CHANNELS.items():  # each one, to report them all
        try:
            build_channels({name: entry})
        except ChannelConfigurationError as exc:
            problems.append(checks.Error(str(exc), id="channels.E001"))
    return problems
