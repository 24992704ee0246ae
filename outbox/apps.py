from django.apps import AppConfig
from django.core import checks


class OutboxConfig(AppConfig):
    name = "outbox"
    verbose_name = "Delivery outbox"

    def ready(self) -> None:
        checks.register(check_unconfigured_channels)


def check_unconfigured_channels(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """`manage.py check` (and every command that runs the checks) names each channel that has
    pending notifications but is not configured: nothing would ever send them.

    A warning, not an error: the service runs, and the operator decides what becomes of them
    (outbox.unconfigured). Silent when the database cannot answer (or is not migrated yet:
    `migrate` runs the checks first) and when the channels are broken (channels.E001 says so).
    """
    from django.db import DatabaseError

    from channels.errors import ChannelConfigurationError
    from channels.registry import all_channels

    from .unconfigured import find

    try:
        configured = all_channels()
    except ChannelConfigurationError:
        return []
    try:
        found = find(configured)
    except DatabaseError:
        return []
    return [checks.Warning(channel.describe(), id="outbox.W001") for channel in found]
