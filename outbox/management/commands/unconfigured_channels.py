"""python manage.py unconfigured_channels [CHANNEL (--to NAME | --fail [--reason TEXT])]

The notifications pending for channels that the channels file no longer configures (removed
or renamed while they waited): listed, moved to a configured channel of the same kind, or
failed with a reason (outbox.unconfigured). Every moved or failed notification says so in its
history; nothing is deleted silently.
"""

from __future__ import annotations

import getpass
import socket

from django.core.management.base import BaseCommand, CommandError

from channels.registry import all_channels
from outbox import unconfigured


class Command(BaseCommand):
    help = ("List the channels that have pending notifications but are not configured; move one's notifications to "
            "a configured channel of the same kind (CHANNEL --to NAME), or fail them (CHANNEL --fail --reason TEXT).")

    def add_arguments(self, parser):
        parser.add_argument("channel", nargs="?", help="an unconfigured channel whose notifications to move or fail")
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--to", metavar="NAME", help="move them to this configured channel (of the same kind)")
        action.add_argument("--fail", action="store_true", help="fail them (status failed, with --reason)")
        parser.add_argument("--reason", default="", help="with --fail: why, in each notification's error and history")

    def handle(self, channel=None, to=None, fail=False, reason="", **options):
        configured = all_channels()
        unconfigured.record_kinds(configured)  # so that this channels file's kinds are known from now on
        if channel is None:
            if to or fail:
                raise CommandError("name the unconfigured CHANNEL whose notifications to move or fail")
            return self._list(configured)
        if not (to or fail):
            raise CommandError("say what becomes of them: --to NAME (move) or --fail (with --reason)")
        if reason and not fail:
            raise CommandError("--reason goes with --fail")
        by = f"{_user()}@{socket.gethostname()} (manage.py unconfigured_channels)"
        try:
            if to:
                target = configured.get(to)
                if target is None:
                    raise CommandError(f"unknown channel {to!r}; configured: {', '.join(sorted(configured))}")
                result = unconfigured.move(channel=channel, to=target, configured=configured, by=by)
                self.stdout.write(f"{channel}: {result.done} notification(s) moved to {to}")
            else:
                error = f"channel {channel} is no longer configured" + (f": {reason}" if reason else "")
                result = unconfigured.fail(channel=channel, reason=error, configured=configured, by=by)
                self.stdout.write(f"{channel}: {result.done} notification(s) failed ({error})")
        except unconfigured.CannotMove as exc:
            raise CommandError(str(exc)) from None
        for outbox_id, why in list(result.refused.items())[:20]:
            self.stdout.write(f"  not moved: outbox row {outbox_id}: {to} refuses it: {why}")
        if len(result.refused) > 20:
            self.stdout.write(f"  ... and {len(result.refused) - 20} more refused by {to}")
        if result.left:
            raise CommandError(
                f"{channel}: {result.left} still pending: refused by the target, or leased to a dispatcher that "
                f"still serves {channel} (an older channels file: restart it, or run this again after its lease)")

    def _list(self, configured) -> None:
        found = unconfigured.find(configured)
        if not found:
            self.stdout.write("every channel with pending notifications is configured")
        for channel in found:
            self.stdout.write(channel.describe())


def _user() -> str:
    """Who runs the command, for the history (a container may have no name for its uid)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"
