"""``reports/breakdown/`` and ``reports/timeseries/``: the same numbers as the query layer,
the admin report page and ``manage.py fluxgate_report``, and as computed by hand; a team's
key sees its own team only."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from fluxgate_django.reports import queries
from tests.api_helpers import API, event_payload, make_world, post_json

pytestmark = pytest.mark.django_db

BREAKDOWN = f"{API}reports/breakdown/"
TIMESERIES = f"{API}reports/timeseries/"


@pytest.fixture
def w():
    world = make_world()
    gpt4o = {"input_tokens": 1000, "cache_read_tokens": 200, "output_tokens": 500}
    a_events = [
        event_payload(feature="search", latency_ms=100, **gpt4o),  # priced: $0.00725
        event_payload(feature="search", latency_ms=300, **gpt4o),
        event_payload(feature="chat", cost_usd="0.1"),
        event_payload(feature="chat", cost_usd="0.2"),
        event_payload(feature="chat", status="ERROR", input_tokens=0, output_tokens=0),
    ]
    b_events = [event_payload(feature="search", cost_usd="0.5")]
    assert (
        post_json(world.client("key_a"), f"{API}events/", {"events": a_events}).status_code == 202
    )
    assert (
        post_json(world.client("key_b"), f"{API}events/", {"events": b_events}).status_code == 202
    )
    return world


def test_breakdown_matches_the_hand_computed_numbers(w):
    today = queries.site_today().isoformat()
    report = w.client("key_a").get(BREAKDOWN, {"by": "feature", "start": today, "end": today})
    assert report.status_code == 200, report.json()
    body = report.json()
    rows = {row["key"]: row for row in body["rows"]}
    assert set(rows) == {"search", "chat"}
    assert Decimal(rows["chat"]["cost_usd"]) == Decimal("0.3")
    assert (rows["chat"]["requests"], rows["chat"]["errors"]) == (3, 1)
    assert Decimal(rows["search"]["cost_usd"]) == Decimal("0.0145")  # 2 x $0.00725
    assert rows["search"]["input_tokens"] == 2000 and rows["search"]["cache_read_tokens"] == 400
    assert Decimal(body["total"]["cost_usd"]) == Decimal("0.3145")
    assert body["total"]["requests"] == 5
    assert [row["key"] for row in body["rows"]] == ["chat", "search"]  # costliest first


def test_api_query_layer_command_and_admin_page_agree(w):
    start, end = queries.last_days(30)
    api = w.client("key_a").get(BREAKDOWN, {"by": "feature"}).json()
    direct = queries.breakdown("feature", start, end, teams=[w.team_a.pk]).as_dict()
    assert api == json.loads(json.dumps(direct))

    out = io.StringIO()
    call_command("fluxgate_report", "--by=feature", "--team=a", "--format=json", stdout=out)
    assert json.loads(out.getvalue()) == api

    superuser = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    admin = Client()
    admin.force_login(superuser)
    page = admin.get(
        reverse("admin:fluxgate_report"), {"by": "feature", "team": "a", "format": "csv"}
    )
    assert page.status_code == 200
    lines = list(csv.DictReader(io.StringIO(page.content.decode())))
    csv_costs = {line["key"] or line["label"]: Decimal(line["cost_usd"]) for line in lines}
    api_costs = {row["key"]: Decimal(row["cost_usd"]) for row in api["rows"]}
    assert csv_costs == {**api_costs, "Total": Decimal(api["total"]["cost_usd"])}


def test_a_team_key_gets_the_same_numbers_as_staff_filtering_on_that_team(w):
    by_key = w.client("key_a").get(BREAKDOWN, {"by": "model"}).json()
    by_staff = w.client("staff").get(BREAKDOWN, {"by": "model", "team": "a"}).json()
    by_admin = w.client("admin_a").get(BREAKDOWN, {"by": "model"}).json()
    assert by_key == by_staff == by_admin


def test_no_numbers_of_other_teams(w):
    for who, teams in [("key_a", {"a"}), ("key_b", {"b"}), ("member_a", {"a"}),
                       ("outsider", set()), ("staff", {"a", "b"})]:  # fmt: skip
        body = w.client(who).get(BREAKDOWN, {"by": "team"}).json()
        assert {row["key"] for row in body["rows"]} == teams, who
    b_total = w.client("key_b").get(BREAKDOWN).json()["total"]
    assert Decimal(b_total["cost_usd"]) == Decimal("0.5")
    # A filter naming another team is refused, not answered with its numbers.
    refused = w.client("key_a").get(BREAKDOWN, {"team": "b"})
    assert refused.status_code == 400 and "team" in refused.json()


def test_filters(w):
    api = w.client("key_a")
    only_chat = api.get(BREAKDOWN, {"by": "feature", "feature": "chat"}).json()
    assert [row["key"] for row in only_chat["rows"]] == ["chat"]
    both = api.get(f"{BREAKDOWN}?by=feature&feature=chat&feature=search").json()
    assert len(both["rows"]) == 2
    none = api.get(BREAKDOWN, {"provider": "anthropic"}).json()
    assert none["rows"] == [] and none["total"]["requests"] == 0


def test_timeseries(w):
    today = queries.site_today()
    body = w.client("key_a").get(TIMESERIES, {"range": "7d"}).json()
    assert body["days"][-1] == today.isoformat() and len(body["days"]) == 7
    (series,) = body["series"]
    assert Decimal(series["costs"][-1]) == Decimal("0.3145")
    assert all(Decimal(c) == 0 for c in series["costs"][:-1])
    by_feature = w.client("key_a").get(TIMESERIES, {"by": "feature", "top": 2}).json()
    assert [s["key"] for s in by_feature["series"]] == ["chat", "search"]
    assert Decimal(by_feature["series"][1]["costs"][-1]) == Decimal("0.0145")
    folded = w.client("key_a").get(TIMESERIES, {"by": "feature", "top": 1}).json()
    assert [s["key"] for s in folded["series"]] == ["__other__"]
    assert Decimal(folded["series"][0]["costs"][-1]) == Decimal("0.3145")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"by": "colour"}, "by"),
        ({"start": "2025-13-01"}, "start"),
        ({"end": "yesterday"}, "end"),
        ({"start": "2025-02-01", "end": "2025-01-01"}, "end"),
        ({"start": "2020-01-01", "end": "2025-01-01"}, "end"),  # over 366 days
        ({"range": "forever"}, "range"),
        ({"feature": "\x00"}, "feature"),
        ({"team": "nope"}, "team"),
    ],
)
def test_bad_parameters_are_400(w, params, field):
    for path in (BREAKDOWN, TIMESERIES):
        response = w.client("key_a").get(path, params)
        assert response.status_code == 400, (path, params)
        assert field in response.json()


def test_timeseries_top_is_bounded(w):
    response = w.client("key_a").get(TIMESERIES, {"top": 0})
    assert response.status_code == 400 and "top" in response.json()


def test_a_lone_start_or_end_gives_a_30_day_range(w):
    body = w.client("key_a").get(BREAKDOWN, {"end": "2025-01-31"}).json()
    assert (body["start"], body["end"]) == ("2025-01-02", "2025-01-31")
    body = w.client("key_a").get(BREAKDOWN, {"start": "2025-01-01"}).json()
    assert (body["start"], body["end"]) == ("2025-01-01", "2025-01-30")
    body = w.client("key_a").get(BREAKDOWN, {"start": "9999-12-30"}).json()
    assert body["end"] == "9999-12-31"
