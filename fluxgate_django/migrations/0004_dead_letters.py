import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fluxgate_django", "0003_membership_default_and_1h_cache_writes"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeadLetter",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("tracking_id", models.UUIDField(unique=True)),
                (
                    "quarantined_at",
                    models.DateTimeField(db_index=True, default=django.utils.timezone.now),
                ),
                ("created_at", models.DateTimeField(blank=True, null=True)),
                ("provider", models.CharField(blank=True, default="", max_length=50)),
                ("model", models.CharField(blank=True, default="", max_length=200)),
                ("feature", models.CharField(blank=True, default="", max_length=100)),
                ("source", models.CharField(blank=True, default="", max_length=20)),
                ("reason", models.TextField()),
                ("record", models.TextField()),
                (
                    "team",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="dead_letters",
                        to="fluxgate_django.team",
                    ),
                ),
            ],
            options={
                "verbose_name": "dead letter",
                "ordering": ["-quarantined_at"],
            },
        ),
    ]
