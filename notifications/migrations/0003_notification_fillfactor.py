from django.db import migrations


class Migration(migrations.Migration):
    """Leave room in each page of `notification` so that the dispatchers' status updates
    (sending, then sent) are HOT updates: they change no indexed column, and with free space
    on the page PostgreSQL rewrites the row in place without touching any index."""

    dependencies = [("notifications", "0002_housekeeping_schedules")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE notification SET (fillfactor = 80)",
            reverse_sql="ALTER TABLE notification RESET (fillfactor)",
        ),
    ]
