from django.db import migrations


class Migration(migrations.Migration):
    """Leave room in each page of `outbox` so that START (sending, attempts: no indexed
    column) is a HOT update, rewriting the row in place without touching its three indexes."""

    dependencies = [("outbox", "0003_claim_index_by_channel")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE outbox SET (fillfactor = 70)",
            reverse_sql="ALTER TABLE outbox RESET (fillfactor)",
        ),
    ]
