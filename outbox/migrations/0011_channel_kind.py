"""The kinds of the configured channels (outbox.models.ChannelKind), recorded now for the
channels configured at this migration, so that their pending notifications can be moved to a
channel of the same kind once one of them is removed from the channels file."""

import django.db.models.functions.datetime
from django.db import migrations, models


def record_configured_kinds(apps, schema_editor):
    from channels.errors import ChannelConfigurationError
    from channels.registry import all_channels

    try:
        channels = all_channels()
    except ChannelConfigurationError:  # `manage.py check` reports it; run_dispatchers records them later
        return
    model = apps.get_model("outbox", "ChannelKind")
    for name, channel in channels.items():
        model.objects.update_or_create(channel=name, defaults={
            "kind": channel.kind, "backend": f"{type(channel).__module__}.{type(channel).__qualname__}"})


class Migration(migrations.Migration):

    dependencies = [
        ('outbox', '0010_outbox_without_foreign_key_constraint'),
    ]

    operations = [
        migrations.CreateModel(
            name='ChannelKind',
            fields=[
                ('channel', models.CharField(max_length=100, primary_key=True, serialize=False)),
                ('kind', models.CharField(max_length=50)),
                ('backend', models.CharField(max_length=255)),
                ('seen_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
            ],
            options={
                'db_table': 'channel_kind',
            },
        ),
        migrations.RunPython(record_configured_kinds, migrations.RunPython.noop),
    ]
