"""The fleet-wide rate limit's counters (notifications.models.ApiRateCounter; the statements
are outbox/sql.py's RATE_TAKE), and the housekeeping schedule that prunes idle clients' rows.

The table is UNLOGGED: every request updates it, and a counter is worth no WAL (a request
that writes only this table, a GET, then commits without waiting for a WAL flush). After a
crash of PostgreSQL, or on a promoted standby, it is empty: the window counts from zero.
Fillfactor 50 leaves room on each page for the next version of a row, so that the counter's
updates stay HOT (no column of the primary key changes)."""

from django.db import migrations, models


def create_schedules(apps, schema_editor):
    from notifications.housekeeping import ensure_schedules

    ensure_schedules(apps.get_model("django_q", "Schedule"))


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="housekeeping: rate counters").delete()


class Migration(migrations.Migration):

    dependencies = [
        ('notifications', '0009_delivery_statistics_counters'),
        ('django_q', '0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more'),
    ]

    operations = [
        migrations.CreateModel(
            name='ApiRateCounter',
            fields=[
                ('pk', models.CompositePrimaryKey('client_id', 'shard', blank=True, editable=False, primary_key=True, serialize=False)),
                ('client_id', models.BigIntegerField()),
                ('shard', models.SmallIntegerField()),
                ('window_start', models.DateTimeField()),
                ('period', models.IntegerField()),
                ('used', models.IntegerField()),
            ],
            options={
                'db_table': 'api_rate_counter',
            },
        ),
        migrations.RunSQL(
            "ALTER TABLE api_rate_counter SET UNLOGGED; ALTER TABLE api_rate_counter SET (fillfactor = 50);",
            "ALTER TABLE api_rate_counter SET LOGGED; ALTER TABLE api_rate_counter RESET (fillfactor);",
        ),
        migrations.RunPython(create_schedules, delete_schedule),
    ]
