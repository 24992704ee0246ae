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
    from .registry import build_channels, check_policies

    problems, built = [], {}
    for name, entry in settings.NOTIFICATION_CHANNELS.items():  # each one, to report them all
        try:
            built.update(build_channels({name: entry}))
        except ChannelConfigurationError as exc:
            problems.append(checks.Error(str(exc), id="channels.E001"))
    if not problems:  # the checks across channels need every channel built
        try:
            check_policies(built)
        except ChannelConfigurationError as exc:
            problems.append(checks.Error(str(exc), id="channels.E002"))
    return problems
