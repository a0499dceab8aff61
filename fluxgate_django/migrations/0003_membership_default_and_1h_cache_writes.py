from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fluxgate_django", "0002_event_team_index_covered"),
    ]

    operations = [
        migrations.AddField(
            model_name="event",
            name="cache_write_1h_tokens",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="teammembership",
            name="is_default",
            field=models.BooleanField(
                default=False,
                help_text=(
                    "Attribute this user's LLM calls to this team when a request names none "
                    "(X-FluxGate-Team). At most one per user."
                ),
            ),
        ),
        migrations.AddConstraint(
            model_name="teammembership",
            constraint=models.UniqueConstraint(
                condition=models.Q(("is_default", True)),
                fields=("user",),
                name="fluxgate_one_default_team",
            ),
        ),
    ]
