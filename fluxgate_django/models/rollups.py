"""Daily rollups of events: what the cost reports read."""

from __future__ import annotations

from django.db import models

from ..reports.histogram import BUCKET_FIELDS
from ..reports.managers import RollupQuerySet


class RollupBase(models.Model):
    """Daily totals of the events of one group, kept current by the recorder.

    ``day`` is the events' date in the site's time zone (``TIME_ZONE``). ``team_key`` is
    the team id, or 0 for events without a team (a plain integer, not a foreign key, so
    that it can be part of the unique key and a deleted team never fails a write).
    ``requests`` counts the calls sent to a provider (or served from the response cache);
    calls refused by a budget are counted apart in ``budget_blocked`` and in nothing else.
    ``errors`` are ERROR and MALFORMED_REQUEST calls. Money is kept in integer units of
    1e-10 USD (``from_units``): ``priced`` calls have a known cost, summed in
    ``cost_units``; ``unpriced`` calls have none (unknown model price), and failed calls
    that were not billed are neither. ``lat_00`` … are latency histogram buckets (see
    ``fluxgate_django.reports.histogram``).
    """

    day = models.DateField()
    team_key = models.BigIntegerField(default=0)
    feature = models.CharField(max_length=100, blank=True, default="")
    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=200, blank=True, default="")

    requests = models.IntegerField(default=0)
    errors = models.IntegerField(default=0)
    budget_blocked = models.IntegerField(default=0)
    fallbacks = models.IntegerField(default=0)
    cache_hits = models.IntegerField(default=0)
    priced = models.IntegerField(default=0)
    unpriced = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0)
    cost_saved_units = models.BigIntegerField(default=0)

    objects = RollupQuerySet.as_manager()

    class Meta:
        abstract = True


for _bucket in BUCKET_FIELDS:
    RollupBase.add_to_class(_bucket, models.IntegerField(default=0))


class UsageRollup(RollupBase):
    """One row per day, team, feature, provider and model: what every report but the
    per-user one reads."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team_key", "feature", "provider", "model"],
                name="fluxgate_unique_usage_rollup",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} team {self.team_key} {self.feature} {self.provider}/{self.model}"


class EndUserUsageRollup(RollupBase):
    """The same totals also split per end user (``Event.end_user_id``), for the per-user
    report. Kept apart because end users are many: the other reports stay at
    groups x days rows however many users a site has."""

    end_user_id = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team_key", "feature", "provider", "model", "end_user_id"],
                name="fluxgate_unique_user_rollup",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} user {self.end_user_id!r} {self.feature} {self.provider}/{self.model}"


class CostReport(UsageRollup):
    """The admin's cost report page (a proxy: it links the report from the admin index)."""

    class Meta:
        proxy = True
        verbose_name = "cost report"
        verbose_name_plural = "cost report"
