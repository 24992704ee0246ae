"""python manage.py housekeeping [--job retention|statistics|idempotency|rate_counters|dispatchers|all]: run the
housekeeping jobs now, by hand (qcluster runs them on their schedule)."""

from django.core.management.base import BaseCommand, CommandError

from notifications import housekeeping


class Command(BaseCommand):
    help = ("Delete finished notifications past NOTIFY_RETENTION_DAYS with their history (retention), expired "
            "Idempotency-Keys (idempotency), the rate limit's counters of clients idle for a day (rate_counters), "
            "dispatcher records without heartbeat for "
            "NOTIFY_DISPATCHER_RETENTION_HOURS (dispatchers), in batches; fold and prune the statistics' counters "
            "(statistics).")

    def add_arguments(self, parser):
        parser.add_argument("--job", choices=[*housekeeping.JOBS, "all"], default="all", help="which job (default: all)")
        parser.add_argument("--batch-size", type=int, help="rows per transaction (default NOTIFY_HOUSEKEEPING_BATCH_SIZE)")
        parser.add_argument("--retention-days", type=float, help="retention: override NOTIFY_RETENTION_DAYS")
        parser.add_argument("--max-seconds", type=float, help="stop each job after this long (default: run until done)")

    def handle(self, job="all", batch_size=None, retention_days=None, max_seconds=None, **options):
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if retention_days is not None and retention_days < 0:
            raise CommandError("--retention-days must not be negative")
        names = list(housekeeping.JOBS) if job == "all" else [job]
        for name in names:
            options = {"batch_size": batch_size, "max_seconds": max_seconds}
            if name == "retention" and retention_days is not None:
                options["retention_days"] = retention_days
            result = housekeeping.run_job(name, **options)
            counts = ", ".join(f"{key} {value}" for key, value in result.items() if key != "job")
            self.stdout.write(f"{name}: {counts}")
