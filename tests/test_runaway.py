"""Runaway detection against a real trailing baseline (spend spread over past minutes)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.cache import cache

from fluxgate_django.models import SpendAnomaly, Team, to_units
from fluxgate_django.runaway import record_spend
from tests.helpers import fluxgate_overrides

RUNAWAY = {
    "enabled": True,
    "window_minutes": 5,
    "baseline_minutes": 60,
    "factor": 5,
    "min_spend_usd": "0.10",
    "block_minutes": 0,
}
NOW = 1_800_000_000.0  # a fixed clock: record_spend(now=...) places spend in its minute


def spend(team: Team, usd: str, minutes_ago: int, feature: str = "chat") -> None:
    record_spend({(team.pk, feature): to_units(Decimal(usd))}, now=NOW - 60 * minutes_ago)


@pytest.fixture
def team(db):
    return Team.objects.create(name="Search", slug="search")


def test_a_steady_spend_is_no_runaway_and_a_spike_above_it_is(team):
    # $0.05 a minute for the baseline hour: $0.25 per 5-minute window (while it builds
    # up from nothing, min_spend is out of reach).
    with fluxgate_overrides(RUNAWAY_DETECTION={**RUNAWAY, "min_spend_usd": "100"}):
        for minutes_ago in range(64, 4, -1):  # minutes -64 … -5
            spend(team, "0.05", minutes_ago)
    with fluxgate_overrides(RUNAWAY_DETECTION=RUNAWAY):
        # The recent window spends 4x its baseline ($1.00 > min_spend): not a runaway.
        spend(team, "1.00", 0)
        assert not SpendAnomaly.objects.exists()
        # Another $0.30 in the same minute: $1.30 > 5 x $0.25.
        spend(team, "0.30", 0)
    (team_wide, feature) = sorted(SpendAnomaly.objects.all(), key=lambda a: a.feature)
    assert (team_wide.feature, feature.feature) == ("", "chat")
    assert feature.recent_usd == Decimal("1.30")
    assert feature.baseline_usd == Decimal("0.25")


def test_the_baseline_is_summed_afresh_each_minute(team):
    """A baseline total is kept for the minute it was read in; a minute later the window
    has moved on, and spend that left it counts in the baseline."""
    with fluxgate_overrides(RUNAWAY_DETECTION=RUNAWAY):
        spend(team, "0.05", 4)
        spend(team, "0.04", 0)  # recent $0.09: below min_spend (baseline read: $0)
        # A minute later the $0.05 has left the window for the baseline: recent
        # $0.04 + $0.06 = $0.10, baseline $0.05 / 12 windows.
        spend(team, "0.06", -1)
    anomaly = SpendAnomaly.objects.get(feature="chat")
    assert anomaly.recent_usd == Decimal("0.10")
    assert anomaly.baseline_usd.quantize(Decimal("0.000001")) == Decimal("0.004167")


def test_counters_survive_a_cleared_cache(team):
    """The cache was flushed (a Redis restart): counting starts again, nothing raises."""
    with fluxgate_overrides(RUNAWAY_DETECTION=RUNAWAY):
        spend(team, "0.04", 0)
        cache.clear()
        spend(team, "0.04", 0)
        spend(team, "0.04", 0)  # $0.12 with the cleared $0.04: would be a runaway
    assert not SpendAnomaly.objects.exists()
    keys = [k for k in cache._cache if ":fluxgate:rate:" in k]  # locmem's own store
    assert keys, "the counters are back after the clear"


def test_events_dated_before_the_window_are_not_this_minutes_spend(team, monkeypatch):
    """A burst of ingested or replayed events of last month, written now: not a runaway
    (it used to be counted as this minute's spend); the same spend made now is one."""
    import datetime as dt

    from django.utils import timezone

    from fluxgate_django import runaway
    from fluxgate_django.records import CostSource
    from tests.services import make_record

    class Batch:
        def __init__(self, records):
            self.records = records

        def team_id(self, record):
            return team.pk

    seen: list[dict] = []
    monkeypatch.setattr(runaway, "record_spend", lambda spend_by, now=None: seen.append(spend_by))

    def records(created_at):
        made = []
        for _ in range(3):
            record = make_record(team="search", feature="chat")
            record.created_at = created_at
            record.cost_usd, record.cost_source = Decimal("1"), CostSource.CLIENT.value
            made.append(record)
        return made

    with fluxgate_overrides(RUNAWAY_DETECTION=RUNAWAY):
        runaway.count_written(Batch(records(timezone.now() - dt.timedelta(days=30))))
        runaway.count_written(Batch(records(timezone.now())))
    assert seen == [{}, {(team.pk, "chat"): to_units(Decimal("3"))}]
