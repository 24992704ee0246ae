"""python manage.py setup_schedules: create or update the django-q2 schedules of the
housekeeping jobs (idempotent; `migrate` has already created them once)."""

from django.core.management.base import BaseCommand
from django_q.models import Schedule

from notifications.housekeeping import SCHEDULES, ensure_schedules


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules of the housekeeping jobs (idempotent)."

    def handle(self, **options):
        created = set(ensure_schedules())
        for name, (func, minutes) in SCHEDULES.items():
            schedule = Schedule.objects.filter(name=name).first()
            state = "created" if name in created else "up to date"
            self.stdout.write(f"{name}: {func} every {minutes} min, next run {schedule.next_run:%Y-%m-%d %H:%M:%S %Z} ({state})")
