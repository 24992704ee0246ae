"""python manage.py run_dispatchers: the delivery side of the service."""

import logging
import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections

from channels.registry import STATUS_WEBHOOKS_CHANNEL, all_channels
from outbox import unconfigured
from outbox.dispatcher import DEADLINE_SLACK, Dispatcher, lease_allows_send
from outbox.retry import RetryPolicy
from outbox.supervisor import Supervisor

logger = logging.getLogger("outbox.unconfigured")


class Command(BaseCommand):
    help = (
        "Run dispatcher processes that claim due notifications from the outbox and send them. "
        "Run as many as you like, on as many hosts as you like, against one database."
    )

    def add_arguments(self, parser):
        conf = settings.OUTBOX
        parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                            help="dispatcher processes (default: one per CPU)")
        parser.add_argument("--threads", type=int, default=16,
                            help="concurrent sends per channel, in each process (default 16); each channel "
                                 "sends on threads of its own, so a provider that hangs holds up only its channel")
        parser.add_argument("--channels", default="",
                            help="comma-separated channel names to serve (default: all configured)")
        parser.add_argument("--batch-size", type=int, default=100,
                            help="rows claimed per transaction (default 100)")
        parser.add_argument("--lease-seconds", type=float, default=conf["LEASE_SECONDS"],
                            help="how long a claim holds its rows (default OUTBOX_LEASE_SECONDS)")
        parser.add_argument("--poll-interval", type=float, default=conf["POLL_INTERVAL_SECONDS"],
                            help="seconds between looks for due work without a notification")
        parser.add_argument("--metrics-port", type=int, default=settings.DISPATCHER_METRICS_PORT,
                            help="serve the dispatcher processes' Prometheus metrics on this port, at /metrics "
                                 "(default DISPATCHER_METRICS_PORT; not served if unset)")
        parser.add_argument("--metrics-addr", default=settings.DISPATCHER_METRICS_ADDR,
                            help="address of the metrics port (default DISPATCHER_METRICS_ADDR or 0.0.0.0)")

    def handle(self, *args, **options):
        configured = all_channels()
        if options["channels"]:
            names = [n.strip() for n in options["channels"].split(",") if n.strip()]
            unknown = sorted(set(names) - set(configured))
            if unknown:
                raise CommandError(f"unknown channel(s) {', '.join(unknown)}; configured: {', '.join(sorted(configured))}")
            channels = {name: configured[name] for name in names}
        else:
            channels = dict(configured)
        for name in ("processes", "threads", "batch_size"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        if options["metrics_port"] is not None and not 0 < options["metrics_port"] < 65536:
            raise CommandError("--metrics-port must be between 1 and 65535")
        self._report_unconfigured(configured)
        self._fit_built_in_channel(channels, options["lease_seconds"])
        slowest = max(channels.values(), key=lambda c: c.send_timeout)
        if not lease_allows_send(lease_left=options["lease_seconds"], send_timeout=slowest.send_timeout):
            raise CommandError(
                f"--lease-seconds ({options['lease_seconds']}) must exceed the send timeout of channel "
                f"{slowest.name!r} ({slowest.send_timeout:g}s) by at least {DEADLINE_SLACK}s"
            )

        def run_one() -> int:
            dispatcher = Dispatcher(
                channels=channels,
                threads=options["threads"],
                batch_size=options["batch_size"],
                lease_seconds=options["lease_seconds"],
                poll_interval=options["poll_interval"],
                notify_debounce=settings.OUTBOX["NOTIFY_DEBOUNCE_MS"] / 1000,
                retry_policy=RetryPolicy.from_settings(),
                failover_after=settings.OUTBOX["FAILOVER_AFTER_ATTEMPTS"],
                routes={name: list(c.policy.fallback) for name, c in configured.items() if c.policy.fallback},
            )
            dispatcher.install_signal_handlers()
            return dispatcher.run()

        supervisor = Supervisor(
            processes=options["processes"], target=run_one, graceful_timeout=options["lease_seconds"],
            metrics_port=options["metrics_port"], metrics_addr=options["metrics_addr"],
        )
        if options["metrics_port"]:
            try:
                supervisor.serve_metrics()
            except OSError as exc:  # the port is taken, or the address is not this host's
                raise CommandError(
                    f"cannot serve metrics on {options['metrics_addr']}:{options['metrics_port']}: {exc}"
                ) from None
        raise SystemExit(supervisor.run())

    def _report_unconfigured(self, configured: dict) -> None:
        """Record the configured channels' kinds, and name each channel that has pending
        notifications but is configured nowhere here (outbox.unconfigured): they would wait
        for ever. In the supervisor, before it forks: its connection is closed again."""
        try:
            unconfigured.record_kinds(configured)
            for channel in unconfigured.find(configured):
                logger.warning("%s", channel.describe(), extra={"channel": channel.channel, "pending": channel.pending})
        except DatabaseError as exc:  # the dispatchers wait for the database themselves
            logger.warning("could not look for unconfigured channels' notifications: %s", exc)
        finally:
            connections.close_all()

    def _fit_built_in_channel(self, channels: dict, lease_seconds: float) -> None:
        """The built-in status-webhooks channel (unless the channels file configures it) sends
        within the lease: its deadline, 10 s by default, is shortened to fit a shorter lease,
        as every channel's must; a lease too short for any send leaves it to other dispatchers."""
        channel = channels.get(STATUS_WEBHOOKS_CHANNEL)
        if channel is None or STATUS_WEBHOOKS_CHANNEL in settings.NOTIFICATION_CHANNELS:
            return
        if lease_allows_send(lease_left=lease_seconds, send_timeout=channel.send_timeout):
            return
        fitting = lease_seconds - 2 * DEADLINE_SLACK
        if fitting >= 1.0:
            channel.send_timeout = fitting
            self.stderr.write(f"channel {STATUS_WEBHOOKS_CHANNEL!r}: send timeout {fitting:g}s, to fit --lease-seconds")
        else:
            del channels[STATUS_WEBHOOKS_CHANNEL]
            self.stderr.write(f"channel {STATUS_WEBHOOKS_CHANNEL!r} not served: --lease-seconds is too short for a send")
