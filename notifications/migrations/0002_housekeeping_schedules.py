"""The django-q2 schedules of the housekeeping jobs (notifications/housekeeping.py): hourly
retention, expired Idempotency-Keys and gone dispatchers. `python manage.py setup_schedules`
does the same at any time (idempotent)."""

from django.db import migrations


def create_schedules(apps, schema_editor):
    from notifications.housekeeping import ensure_schedules

    ensure_schedules(apps.get_model("django_q", "Schedule"))


def delete_schedules(apps, schema_editor):
    from notifications.housekeeping import SCHEDULES

    apps.get_model("django_q", "Schedule").objects.filter(name__in=list(SCHEDULES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedules, delete_schedules)]
