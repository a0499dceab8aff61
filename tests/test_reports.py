"""Report rollups and the query layer: histogram error bound, incremental rollups equal a
rebuild from events, and a breakdown computed by hand."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from fluxgate_django import track_openai
from fluxgate_django.models import EndUserUsageRollup, Event, Team, UsageRollup
from fluxgate_django.money import to_units as money_units
from fluxgate_django.recording import write_events
from fluxgate_django.records import EventRecord
from fluxgate_django.reports import breakdown, compare, last_days, preset_range, rollups, timeseries
from fluxgate_django.reports.chart import stacked_bar_chart
from fluxgate_django.reports.histogram import (
    BUCKET_COUNT,
    EDGES_MS,
    MAX_RELATIVE_ERROR,
    bucket_of,
    quantile,
)
from fluxgate_django.reports.rollups import (
    GROUP_KEYS,
    USER_GROUP_KEYS,
    RollupBatch,
    event_day,
    rebuild_rollups,
    rollup_rows,
)
from fluxgate_django.testing import FakeReply
from tests.helpers import MSGS, fluxgate_overrides, write_twice_at_once


@pytest.fixture(autouse=True)
def _no_runaway_detection():
    """The datasets spend fast: keep runaway detection (and its notifications) out of it."""
    with fluxgate_overrides(RUNAWAY_DETECTION={"enabled": False}):
        yield


def clear_report_tables() -> None:
    """Start from empty tables even if another test's subprocess committed events to the
    shared PostgreSQL test database: these tests count every event."""
    for model in (Event, UsageRollup, EndUserUsageRollup):
        model.objects.all().delete()


# -- a dataset with known numbers ----------------------------------------------------------


def noon(days_ago: int = 0) -> dt.datetime:
    """Noon of a day in the site's time zone, ``days_ago`` days before today."""
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    day = today - dt.timedelta(days=days_ago)
    return timezone.make_aware(dt.datetime.combine(day, dt.time(12)))


def event(**fields: Any) -> EventRecord:
    fields.setdefault("created_at", noon())
    fields.setdefault("operation", "chat")
    fields.setdefault("status", "SUCCESS")
    return EventRecord(tracking_id=uuid.uuid4(), **fields)


def make_dataset() -> dict[str, Team]:
    """Seed 000's A/B test and a few other features, written through the recorder.

    ==============  =====  ====================================================
    feature         team   calls
    ==============  =====  ====================================================
    ab-test-gpt     search $0.01 1 s; $0.02 2 s; an error (not billed) 0.5 s;
                           a $0.03 fallback attempt 3 s — and a $5 call 40 days ago
    ab-test-claude  support $0.015 1.5 s (500 cache-read tokens); $0.015 1.5 s;
                           a malformed request 0.1 s; a response-cache hit $0
                           2 ms that saved $0.015
    triage          support two calls of a model without a price, 0.3 s
    chat            —      $0.001 50 ms; and a call refused by a budget (search)
    ==============  =====  ====================================================
    """
    clear_report_tables()
    search = Team.objects.create(name="Search", slug="search")
    support = Team.objects.create(name="Support", slug="support")
    gpt = {"feature": "ab-test-gpt", "team": "search", "provider": "openai", "model": "gpt-4o"}
    claude = {
        "feature": "ab-test-claude",
        "team": support,
        "provider": "anthropic",
        "model": "claude-sonnet-4-6",
    }
    write_events(
        [
            event(**gpt, cost_usd=Decimal("0.01"), latency_ms=1000.0, input_tokens=1000,
                  output_tokens=200, end_user_id="u1"),
            event(**gpt, cost_usd=Decimal("0.02"), latency_ms=2000.0, input_tokens=2000,
                  output_tokens=400, created_at=noon(1), end_user_id="u2"),
            event(**gpt, status="ERROR", cost_source="not-billed", latency_ms=500.0,
                  created_at=noon(1)),
            event(**gpt, cost_usd=Decimal("0.03"), latency_ms=3000.0, input_tokens=3000,
                  output_tokens=600, fallback_attempt=1, created_at=noon(2), end_user_id="u1"),
            event(**gpt, cost_usd=Decimal("5"), latency_ms=9000.0, created_at=noon(40)),
        ]
    )  # fmt: skip
    write_events(
        [
            event(**claude, cost_usd=Decimal("0.015"), latency_ms=1500.0, input_tokens=1500,
                  output_tokens=300, cache_read_tokens=500),
            event(**claude, cost_usd=Decimal("0.015"), latency_ms=1500.0, input_tokens=1000,
                  output_tokens=300),
            event(**claude, status="MALFORMED_REQUEST", cost_source="not-billed",
                  latency_ms=100.0),
            event(**claude, cost_usd=Decimal(0), cost_saved_usd=Decimal("0.015"), cache_hit=True,
                  latency_ms=2.0, cost_source="cache"),
            event(feature="triage", team=support.pk, provider="openai", model="acme-llama",
                  cost_source="unknown", latency_ms=300.0, input_tokens=400, output_tokens=20),
            event(feature="triage", team="support", provider="openai", model="acme-llama",
                  cost_source="unknown", latency_ms=300.0, input_tokens=600, output_tokens=30),
            event(feature="chat", provider="openai", model="gpt-4o-mini",
                  cost_usd=Decimal("0.001"), latency_ms=50.0),
            event(feature="chat", team="search", provider="openai", model="gpt-4o-mini",
                  status="BUDGET_EXCEEDED", cost_usd=Decimal(0), cost_source="not-sent",
                  latency_ms=0.0),
        ]
    )  # fmt: skip
    return {"search": search, "support": support}


#: The by-feature report of the last 30 days, computed by hand (as ``as_dict()`` gives it).
EXPECTED_BY_FEATURE = {
    "ab-test-gpt": {
        "requests": 4,
        "errors": 1,
        "error_rate": 0.25,
        "fallbacks": 1,
        "fallback_rate": 0.25,
        "cache_hits": 0,
        "input_tokens": 6000,
        "output_tokens": 1200,
        "cost_usd": "0.06",
        "unpriced": 0,
        "cost_per_request_usd": "0.015",
        "share_of_cost": round(0.06 / 0.091, 4),
    },
    "ab-test-claude": {
        "requests": 4,
        "errors": 1,
        "error_rate": 0.25,
        "cache_hits": 1,
        "cache_hit_rate": 0.25,
        "cache_read_tokens": 500,
        "cost_usd": "0.03",
        "cost_saved_usd": "0.015",
        "cost_per_request_usd": "0.0075",
        "share_of_cost": round(0.03 / 0.091, 4),
    },
    "chat": {
        "requests": 1,
        "budget_blocked": 1,
        "cost_usd": "0.001",
        "cost_per_request_usd": "0.001",
    },
    "triage": {
        "requests": 2,
        "cost_usd": None,
        "unpriced": 2,
        "cost_per_request_usd": None,
        "share_of_cost": 0.0,
        "input_tokens": 1000,
    },
}
#: Exact nearest-rank latency percentiles (ms) of each feature, for the bucket bound.
EXACT_LATENCIES = {
    "ab-test-gpt": {"p50": 1000.0, "p95": 3000.0},
    "ab-test-claude": {"p50": 100.0, "p95": 1500.0},
    "triage": {"p50": 300.0, "p95": 300.0},
    "chat": {"p50": 50.0, "p95": 50.0},
}


def assert_matches_expected(rows: list[dict[str, Any]]) -> None:
    """``rows`` (``as_dict()`` rows) are the hand-computed report, percentiles in bound."""
    by_key = {row["key"]: row for row in rows}
    assert list(by_key) == ["ab-test-gpt", "ab-test-claude", "chat", "triage"]  # by cost
    for feature, expected in EXPECTED_BY_FEATURE.items():
        for column, value in expected.items():
            assert by_key[feature][column] == value, (feature, column)
        for name, exact in EXACT_LATENCIES[feature].items():
            assert within_bucket_error(by_key[feature][f"{name}_latency_ms"], exact), (
                feature,
                name,
            )


def within_bucket_error(estimate: float | None, exact: float) -> bool:
    assert estimate is not None
    if exact < EDGES_MS[0]:
        return abs(estimate - exact) < EDGES_MS[0]
    return exact / (1 + MAX_RELATIVE_ERROR) - 0.1 <= estimate <= exact * (1 + MAX_RELATIVE_ERROR)


# -- histogram -----------------------------------------------------------------------------


def test_bucket_edges_are_log_scale_from_8_ms_to_131_s():
    assert BUCKET_COUNT == 44
    assert EDGES_MS[0] == 8.0 and EDGES_MS[-1] == pytest.approx(131072.0)
    assert bucket_of(0.0) == bucket_of(-1.0) == bucket_of(7.99) == 0
    assert bucket_of(8.0) == 1  # lower edges are inclusive
    assert bucket_of(1e9) == BUCKET_COUNT - 1
    ratios = {round(b / a, 9) for a, b in itertools.pairwise(EDGES_MS)}
    assert ratios == {round(2 ** (1 / 3), 9)}


def test_quantile_of_an_empty_histogram_is_none():
    assert quantile([0] * BUCKET_COUNT, 0.95) is None


@pytest.mark.parametrize("seed", range(5))
def test_quantiles_stay_within_the_documented_error_of_nearest_rank(seed):
    rng = random.Random(seed)
    latencies = [rng.lognormvariate(math.log(800), 0.9) for _ in range(rng.randint(1, 3000))]
    counts = [0] * BUCKET_COUNT
    for latency in latencies:
        counts[bucket_of(latency)] += 1
    ordered = sorted(latencies)
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        assert within_bucket_error(quantile(counts, q), exact), (q, exact)


def test_an_open_ended_bucket_reports_its_lower_edge():
    counts = [0] * BUCKET_COUNT
    counts[-1] = 3
    assert quantile(counts, 0.5) == EDGES_MS[-1]


# -- rollups -------------------------------------------------------------------------------


def random_records(rng: random.Random, n: int, teams: list[Any]) -> list[EventRecord]:
    statuses = ["SUCCESS"] * 6 + ["ERROR", "MALFORMED_REQUEST", "BUDGET_EXCEEDED", "MAX_TOKENS"]
    costs = [None, Decimal(0), Decimal("0.0045"), Decimal("0.000123456789125"), Decimal("1.5")]
    return [
        event(
            created_at=noon(0) + dt.timedelta(hours=rng.uniform(-24 * 5, 11)),
            provider=rng.choice(["openai", "anthropic"]),
            model=rng.choice(["gpt-4o", "claude-haiku-4-5", ""]),
            status=rng.choice(statuses),
            team=rng.choice(teams),
            feature=rng.choice(["chat", "rag", "", "x" * 150]),
            end_user_id=rng.choice(["", "u1", "u2", "u3"]),
            cost_usd=rng.choice(costs),
            cost_source=rng.choice(["", "not-billed", "unknown"]),
            cost_saved_usd=rng.choice([None, Decimal("0.002")]),
            latency_ms=rng.choice([None, 0.0, 8.0, 3.5, rng.lognormvariate(6.5, 1.2)]),
            input_tokens=rng.randint(0, 5000),
            output_tokens=rng.randint(0, 900),
            cache_read_tokens=rng.randint(0, 1),
            cache_write_tokens=rng.randint(0, 1),
            reasoning_tokens=rng.randint(0, 2),
            fallback_attempt=rng.choice([0, 0, 1, 2]),
            cache_hit=rng.random() < 0.1,
        )
        for _ in range(n)
    ]


def all_rollups() -> tuple[list[Any], list[Any]]:
    return rollup_rows(UsageRollup), rollup_rows(EndUserUsageRollup)


@pytest.mark.django_db
@pytest.mark.parametrize("time_zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_incremental_rollups_equal_a_rebuild_from_events(time_zone):
    clear_report_tables()
    with override_settings(TIME_ZONE=time_zone):
        rng = random.Random(42)
        team = Team.objects.create(name="A", slug="a")
        records = random_records(rng, 600, [None, "a", team.pk, team, "no-such-team"])
        write_events(records[:250])
        write_events(records[200:])  # 50 already stored: must not count twice
        write_events(records[:10] + records[:10])  # duplicates within a batch, too
        incremental = all_rollups()
        assert Event.objects.count() == 600
        assert sum(r.requests + r.budget_blocked for r in UsageRollup.objects.all()) == 600
        assert sum(r.requests for r in UsageRollup.objects.all()) == sum(
            r.requests for r in EndUserUsageRollup.objects.all()
        )

        assert rebuild_rollups() > 0
        assert all_rollups() == incremental
        since = event_day(noon(2))
        rebuild_rollups(since)
        assert all_rollups() == incremental
        # The rollup days are the site's days, as in SQL.
        days = {e.created_at for e in Event.objects.all()}
        assert {r[0] for r in incremental[0]} == {event_day(d) for d in days}


@pytest.mark.django_db
@pytest.mark.parametrize("time_zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_the_database_sums_a_batch_as_python_does(time_zone):
    """On PostgreSQL a batch of new events is summed by the database (the rebuild's SQL);
    elsewhere in Python. Either way the rows equal :class:`RollupBatch`'s own sums."""
    from fluxgate_django import teams
    from fluxgate_django.recording import rows as event_rows

    clear_report_tables()
    with override_settings(TIME_ZONE=time_zone):
        team = Team.objects.create(name="A", slug="a")
        records = random_records(random.Random(7), 400, [None, "a", team, "no-such-team"])
        expected = RollupBatch()
        slugs = teams.team_ids(r.team for r in records if isinstance(r.team, str))
        rows = event_rows.event_rows(records, slugs)
        expected.add_rows(rows, event_rows.event_rows_spec().columns)
        write_events(records)
        assert all_rollups() == (expected.rows(GROUP_KEYS), expected.rows(USER_GROUP_KEYS))


@pytest.mark.django_db(transaction=True)
def test_a_batch_written_twice_at_once_is_counted_once(monkeypatch):
    """Two writers with the same batch reach the INSERT together (a requeued Celery
    message, a re-sent ingest batch): the rollups still equal a rebuild."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...): concurrent writers")
    clear_report_tables()
    Team.objects.create(name="A", slug="a")
    records = random_records(random.Random(9), 200, [None, "a"])  # (COPY, then INSERT)
    write_twice_at_once(monkeypatch, records)
    assert Event.objects.count() == 200
    incremental = all_rollups()
    assert sum(r.requests + r.budget_blocked for r in UsageRollup.objects.all()) == 200
    rebuild_rollups()
    assert all_rollups() == incremental


@pytest.mark.django_db
def test_rebuild_puts_back_what_was_lost_and_keeps_other_days(capsys):
    make_dataset()
    expected = all_rollups()
    UsageRollup.objects.filter(day=event_day(noon(0))).delete()
    EndUserUsageRollup.objects.all().update(requests=99)
    call_command("fluxgate_rebuild_rollups", "--since", event_day(noon(1)).isoformat())
    assert "Rebuilt" in capsys.readouterr().out
    rebuilt = all_rollups()
    assert rebuilt[0] == expected[0]
    # Older user rows were outside --since: left as they were.
    assert {r[6] for r in rebuilt[1] if r[0] < event_day(noon(1))} == {99}
    call_command("fluxgate_rebuild_rollups")
    assert all_rollups() == expected
    with pytest.raises(CommandError):
        call_command("fluxgate_rebuild_rollups", "--since", "last week")


@pytest.mark.django_db
def test_a_failing_rollup_write_loses_no_event(caplog):
    """The rollup table is missing (a botched migration): the events are still stored."""
    from django.db import connection

    clear_report_tables()
    qn = connection.ops.quote_name
    table = UsageRollup._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {qn(table)} RENAME TO {qn('fluxgate_moved_away')}")
    try:
        with fluxgate_overrides(RAISE_ERRORS=False):
            assert write_events([event(provider="openai", model="gpt-4o", feature="f")]) == 1
            # A batch with an event stored before takes the other way on PostgreSQL.
            stored = Event.objects.get()
            again = event(provider="openai", model="gpt-4o", feature="f")
            assert write_events([again, dataclasses.replace(again)]) == 2
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {qn('fluxgate_moved_away')} RENAME TO {qn(table)}")
    assert Event.objects.count() == 2 and Event.objects.filter(pk=stored.pk).exists()
    assert not UsageRollup.objects.exists()
    assert caplog.text.count("report rollups") == 2


@pytest.mark.django_db
def test_the_update_or_insert_fallback_gives_the_same_rows(monkeypatch):
    """Databases without ON CONFLICT add a batch with an UPDATE, or an INSERT, per group."""
    make_dataset()
    expected = all_rollups()
    UsageRollup.objects.all().delete()
    EndUserUsageRollup.objects.all().delete()
    records = random_records(random.Random(3), 50, [None, "search"])
    rebuild_rollups()
    monkeypatch.setattr(rollups, "UPSERT_VENDORS", ())
    write_events(records)
    monkeypatch.undo()
    fallback = all_rollups()
    rebuild_rollups()
    assert fallback == all_rollups() != expected


def test_money_units_round_like_a_numeric_column():
    assert money_units(Decimal("0.0045")) == 45_000_000
    assert money_units(Decimal("0.00000000005")) == 1  # half away from zero
    assert money_units(Decimal("0.000000000049")) == 0
    assert money_units("1.5") == 15_000_000_000


@pytest.mark.django_db
def test_rollups_follow_real_tracked_calls(openai_client, fake):
    clear_report_tables()
    client = track_openai(openai_client).with_context(feature="ab-test-gpt", team=None)
    for latency in (0.01, 0.02, 0.03):
        fake.enqueue(FakeReply(text="ok", input_tokens=1000, output_tokens=100, delay=latency))
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
    fake.enqueue(FakeReply(status=500, error_message="boom"))
    with pytest.raises(Exception):  # noqa: B017 - the SDK's own error type
        client.chat.completions.create(model="gpt-4o", messages=MSGS)

    start, end = last_days(1)
    (row,) = breakdown("feature", start, end).rows
    events = Event.objects.all()
    assert row.requests == 4 and row.errors == 1
    assert row.cost_usd == sum(e.cost_usd for e in events if e.cost_usd is not None)
    assert row.input_tokens == 3000
    exact = sorted(e.latency_ms for e in events)
    assert within_bucket_error(row.p50_latency_ms, exact[1])


# -- query layer ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_breakdown_by_feature_matches_the_hand_computed_report():
    make_dataset()
    report = breakdown("feature", *last_days(30))
    assert_matches_expected([row.as_dict() for row in report])
    total = report.total
    assert (total.requests, total.errors, total.unpriced, total.budget_blocked) == (11, 2, 2, 1)
    assert total.cost_usd == Decimal("0.091")
    assert total.share_of_cost == 1.0
    # The $5 call of 40 days ago is in a 45-day report.
    assert breakdown("feature", *last_days(45)).total.cost_usd == Decimal("5.091")


@pytest.mark.django_db
def test_every_dimension_adds_up_to_the_same_total():
    make_dataset()
    start, end = last_days(30)
    totals = {by: breakdown(by, start, end).total.measures for by in ("feature", "team",
              "model", "provider", "user", "day")}  # fmt: skip
    assert len(set(totals.values())) == 1
    by_team = {r.key: r for r in breakdown("team", start, end)}
    assert by_team["search"].label == "Search" and by_team["search"].requests == 4
    assert by_team["search"].budget_blocked == 1
    assert by_team[""].label == "(no team)" and by_team[""].requests == 1
    assert by_team["support"].unpriced == 2 and by_team["support"].cost_usd == Decimal("0.03")
    by_user = {r.key: r for r in breakdown("user", start, end)}
    assert by_user["u1"].cost_usd == Decimal("0.04") and by_user[""].label == "(anonymous)"
    by_day = breakdown("day", start, end)
    assert [r.key for r in by_day] == [noon(d).date().isoformat() for d in (2, 1, 0)]


@pytest.mark.django_db
def test_filters_and_team_restrictions():
    teams = make_dataset()
    start, end = last_days(30)
    only_support = breakdown("feature", start, end, teams=[teams["support"].pk])
    assert [r.key for r in only_support] == ["ab-test-claude", "triage"]
    assert breakdown("feature", start, end, filters={"team": ["support"]}).rows == (
        only_support.rows
    )
    openai = breakdown("model", start, end, filters={"provider": ["openai"]})
    assert {r.key for r in openai} == {"gpt-4o", "gpt-4o-mini", "acme-llama"}
    both = breakdown(
        "feature", start, end, filters={"provider": "openai", "feature": ["chat", "triage"]}
    )
    assert [r.key for r in both] == ["chat", "triage"]
    assert breakdown("feature", start, end, filters={"team": ["nope"]}).rows == []
    assert breakdown("feature", start, end, filters={"user": ["u2"]}).total.requests == 1
    # Restricted to a team, a filter on another team finds nothing.
    assert not breakdown("feature", start, end, teams=[teams["support"].pk],
                         filters={"team": "search"}).rows  # fmt: skip
    with pytest.raises(ValueError):
        breakdown("colour", start, end)
    with pytest.raises(ValueError):
        breakdown("feature", start, end, filters={"colour": ["red"]})


@pytest.mark.django_db
def test_compare_two_features_side_by_side():
    make_dataset()
    a, b, missing = compare(["ab-test-gpt", "ab-test-claude", "nope"], *last_days(30))
    assert (a.key, b.key, missing.key) == ("ab-test-gpt", "ab-test-claude", "nope")
    assert a.cost_per_request_usd == Decimal("0.015")
    assert b.cost_per_request_usd == Decimal("0.0075")
    assert a.error_rate == b.error_rate == 0.25
    assert a.p95_latency_ms > b.p95_latency_ms
    assert missing.requests == 0 and missing.cost_usd == 0 and missing.p95_latency_ms is None
    assert a.share_of_cost == pytest.approx(2 / 3, abs=1e-4)


@pytest.mark.django_db
def test_unpriced_calls_are_never_shown_as_zero_dollars():
    make_dataset()
    triage = next(r for r in breakdown("feature", *last_days(30)) if r.key == "triage")
    assert triage.cost_usd is None and triage.unpriced == 2
    assert triage.as_dict()["cost_usd"] is None
    from fluxgate_django.reports.export import cost_text

    assert cost_text(triage) == "unpriced (2)"
    support = next(r for r in breakdown("team", *last_days(30)) if r.key == "support")
    assert cost_text(support) == "$0.0300 + 2 unpriced"


@pytest.mark.django_db
def test_timeseries_and_chart():
    make_dataset()
    start, end = last_days(30)
    ts = timeseries("feature", start, end)
    assert len(ts.days) == 30 and ts.days[-1] == end
    assert [s.key for s in ts.series] == ["ab-test-gpt", "ab-test-claude", "chat", "triage"]
    assert sum(ts.day_totals) == Decimal("0.091")
    assert ts.series[0].costs[-3:] == [Decimal("0.03"), Decimal("0.02"), Decimal("0.01")]
    top2 = timeseries("feature", start, end, top=2)
    assert [s.key for s in top2.series] == ["ab-test-gpt", "__other__"]
    assert top2.series[1].label == "Other (3)" and sum(top2.day_totals) == Decimal("0.091")
    assert len(timeseries("day", start, end).series) == 1

    svg = str(stacked_bar_chart(ts))
    assert svg.count('class="fg-series"') == 4
    # gpt on 3 days, claude and chat today (triage has no priced cost).
    assert svg.count('class="fg-bar"') == 5
    assert "<script" not in svg and "http://" not in svg.replace("http://www.w3.org/", "")


def test_date_presets():
    today = dt.date(2025, 3, 18)
    assert preset_range("today", today) == (today, today)
    assert preset_range("7d", today) == (dt.date(2025, 3, 12), today)
    assert preset_range("30d", today) == (dt.date(2025, 2, 17), today)
    assert preset_range("month", today) == (dt.date(2025, 3, 1), today)
    with pytest.raises(ValueError):
        preset_range("year", today)
