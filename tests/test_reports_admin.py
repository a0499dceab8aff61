"""The admin cost report page and ``manage.py fluxgate_report``: the same numbers as the
query layer and as the hand-computed report, CSV export, and who may see which teams."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from fluxgate_django.budgets import window_start
from fluxgate_django.models import Budget, Event, SpendCounter, TeamMembership, to_units
from fluxgate_django.reports import breakdown, last_days
from fluxgate_django.reports.queries import EXPORT_COLUMNS
from tests.helpers import fluxgate_overrides
from tests.test_reports import assert_matches_expected, clear_report_tables, make_dataset

pytestmark = pytest.mark.django_db

REPORT = "admin:fluxgate_report"


@pytest.fixture(autouse=True)
def _no_runaway_detection():
    with fluxgate_overrides(RUNAWAY_DETECTION={"enabled": False}):
        yield


@pytest.fixture
def teams() -> dict[str, Any]:
    return make_dataset()


def report_url(query: str = "") -> str:
    return reverse(REPORT) + (f"?{query}" if query else "")


def csv_rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def as_csv_values(row: dict[str, Any]) -> dict[str, str]:
    """An ``as_dict()`` row as csv.DictReader reads it back."""
    return {k: "" if row[k] is None else str(row[k]) for k in EXPORT_COLUMNS}


def staff_user(django_user_model: Any, username: str, **extra: Any) -> Any:
    return django_user_model.objects.create_user(username, password="pw", is_staff=True, **extra)


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# -- numbers -------------------------------------------------------------------------------


def test_the_page_shows_the_query_layer_numbers(admin_client, teams):
    response = admin_client.get(report_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert "Cost Breakdown by Feature" in html
    expected = breakdown("feature", *last_days(30))
    page = response.context["report"]
    assert [r.as_dict() for r in page.rows] == [r.as_dict() for r in expected.rows]
    assert_matches_expected([r.as_dict() for r in page.rows])
    # What a person reads: cost, cost per request, p95, error rate, unpriced.
    assert "$0.0600" in html and "$0.0150" in html and "25.0%" in html
    assert "unpriced (2)" in html
    assert response.context["total"]["cost"] == "$0.0910 + 2 unpriced"
    assert "1 call refused by budgets is not counted above" in html
    assert html.count('class="fg-series"') == 4


def test_csv_export_equals_the_page_and_the_command(admin_client, teams, capsys):
    response = admin_client.get(report_url("by=feature&range=30d&format=csv"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    rows = csv_rows(response.content)
    report = breakdown("feature", *last_days(30))
    assert rows == [as_csv_values(r.as_dict()) for r in [*report.rows, report.total]]
    assert rows[-1]["label"] == "Total" and rows[-1]["cost_usd"] == "0.091"
    triage = next(r for r in rows if r["key"] == "triage")
    assert triage["cost_usd"] == "" and triage["unpriced"] == "2"  # unpriced, not $0

    call_command("fluxgate_report", "--by", "feature", "--days", "30", "--format", "csv")
    assert capsys.readouterr().out == response.content.decode()


def test_command_json_and_table_agree_with_the_page(admin_client, teams, capsys):
    call_command("fluxgate_report", "--by", "feature", "--days", "30", "--format", "json")
    data = json.loads(capsys.readouterr().out)
    page = admin_client.get(report_url("by=feature")).context["report"]
    assert data == page.as_dict()
    assert_matches_expected(data["rows"])

    call_command("fluxgate_report", "--by", "feature", "--days", "30")
    table = capsys.readouterr().out
    assert table.startswith("Cost by feature, ")
    cells = {line.split()[0]: re.split(r"\s{2,}", line) for line in table.splitlines()[3:] if line}
    header = re.split(r"\s{2,}", table.splitlines()[1])
    triage = dict(zip(header, cells["triage"], strict=True))
    gpt = dict(zip(header, cells["ab-test-gpt"], strict=True))
    assert triage["cost"] == "unpriced (2)" and triage["cost/req"] == "-"
    assert (gpt["cost"], gpt["cost/req"], gpt["errors"]) == ("$0.0600", "$0.0150", "25.0%")
    assert "1 calls refused by budgets" in table


def test_command_filters_team_and_compares(teams, capsys):
    call_command("fluxgate_report", "--by", "model", "--team", "support", "--format", "json")
    data = json.loads(capsys.readouterr().out)
    assert {r["key"] for r in data["rows"]} == {"claude-sonnet-4-6", "acme-llama"}
    call_command(
        "fluxgate_report", "--compare", "ab-test-gpt,ab-test-claude", "--days", "7",
        "--format", "json",
    )  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in data["rows"]] == ["ab-test-gpt", "ab-test-claude"]
    assert [r["cost_per_request_usd"] for r in data["rows"]] == ["0.015", "0.0075"]
    with pytest.raises(CommandError, match="No team"):
        call_command("fluxgate_report", "--team", "nope")
    with pytest.raises(CommandError):
        call_command("fluxgate_report", "--start", "2025-02-01", "--end", "2025-01-01")


def test_filters_ranges_and_dimensions_on_the_page(admin_client, teams):
    by_team = admin_client.get(report_url("by=team")).context["report"]
    assert {r.key: r.requests for r in by_team} == {"search": 4, "support": 6, "": 1}
    filtered = admin_client.get(report_url("provider=anthropic&feature=ab-test-claude,triage"))
    assert [r.key for r in filtered.context["report"]] == ["ab-test-claude"]
    today = admin_client.get(report_url("range=today")).context["report"]
    assert today.total.requests == 8
    start, end = last_days(3)
    custom = admin_client.get(report_url(f"by=day&start={start}&end={end}"))
    assert len(custom.context["report"].rows) == 3
    long = admin_client.get(report_url(f"start=1990-01-01&end={end}"))
    assert long.context["req"].start == end - dt.timedelta(days=365)
    assert "at most 366 days" in long.content.decode()
    preset = admin_client.get(report_url(f"start={last_days(7)[0]}&end={end}"))
    assert preset.context["req"].preset == "7d"  # the "Last 7 days" pill stays lit
    bad = admin_client.get(report_url("by=colour&start=yesterday"))
    assert bad.status_code == 200
    assert len(bad.context["req"].errors) == 2
    assert bad.context["report"].by == "feature"


def test_comparison_of_two_features(admin_client, teams):
    response = admin_client.get(report_url("compare=ab-test-gpt,ab-test-claude"))
    rows = [r["row"] for r in response.context["comparison"]]
    assert [r.key for r in rows] == ["ab-test-gpt", "ab-test-claude"]
    html = response.content.decode()
    assert 'id="fg-compare-table"' in html
    compare_table = html[html.index('id="fg-compare-table"') :]
    assert "$0.0150" in compare_table and "$0.0075" in compare_table  # cost per request
    assert "25.0%" in compare_table  # error rate


def test_budget_state_per_team(admin_client, teams):
    budget = Budget.objects.create(team=teams["search"], period="month", limit_usd=Decimal("10"))
    # (The budget's counter may exist already: a new budget counts the window's spend.)
    SpendCounter.objects.update_or_create(
        budget=budget,
        window_start=window_start("month"),
        defaults={
            "limit_units": to_units(Decimal("10")),
            "blocking": True,
            "spent_units": to_units(Decimal("8.5")),
        },
    )
    Budget.objects.create(team=teams["support"], feature="triage", limit_usd=Decimal("1"))
    response = admin_client.get(report_url())
    states = {b["state"].team_slug: b["state"] for b in response.context["budgets"]}
    assert states["search"].percent_used == Decimal("85.0")
    assert states["search"].state == "alert"
    assert states["support"].spent_usd == 0 and states["support"].feature == "triage"
    assert "85.0%" in response.content.decode()


def test_the_report_after_the_demo(admin_client, capsys):
    pytest.importorskip("openai")
    pytest.importorskip("anthropic")
    clear_report_tables()
    call_command("fluxgate_demo", "--calls", "24", "--days", "0", "--no-input")
    capsys.readouterr()
    response = admin_client.get(report_url("by=feature&range=today"))
    html = response.content.decode()
    assert "Cost Breakdown by Feature" in html
    report = response.context["report"]
    # 24 SDK calls, plus the LLMService part: routed tasks, a fallback attempt, an A/B pair.
    calls = Event.objects.exclude(status="BUDGET_EXCEEDED").count()
    assert calls > 24 and report.total.requests == calls
    assert {"chat", "summarize", "ticket-triage", "ab-test-gpt", "ab-test-claude"} <= {
        r.key for r in report
    }
    assert report.total.fallbacks >= 1
    triage = next(r for r in report if r.key == "ticket-triage")
    assert triage.cost_usd is None and "unpriced" in html  # the self-hosted model
    assert report.total.errors > 0 and report.total.p95_latency_ms is not None
    exported = admin_client.get(report_url("by=feature&range=today&format=csv"))
    assert csv_rows(exported.content)[-1]["requests"] == str(calls)


# -- who sees what -------------------------------------------------------------------------


def test_the_admin_index_links_the_report(admin_client):
    response = admin_client.get(reverse("admin:index"))
    assert reverse(REPORT) in response.content.decode()


def test_a_team_admin_sees_only_their_teams(django_user_model, teams):
    user = staff_user(django_user_model, "lead")
    TeamMembership.objects.create(user=user, team=teams["support"], role="admin")
    TeamMembership.objects.create(user=user, team=teams["search"], role="member")
    Budget.objects.create(team=teams["search"], limit_usd=Decimal("1"))
    Budget.objects.create(team=teams["support"], limit_usd=Decimal("2"))
    client = client_for(user)
    assert reverse(REPORT) in client.get(reverse("admin:index")).content.decode()

    response = client.get(report_url())
    assert response.status_code == 200
    assert [r.key for r in response.context["report"]] == ["ab-test-claude", "triage"]
    assert response.context["scope"] == "Your teams: Support"
    assert [b["state"].team_slug for b in response.context["budgets"]] == ["support"]
    by_team = client.get(report_url("by=team")).context["report"]
    assert [r.key for r in by_team] == ["support"]
    # Asking for another team's numbers gives nothing, in the page and the export.
    assert not client.get(report_url("team=search")).context["report"].rows
    rows = csv_rows(client.get(report_url("team=search&format=csv")).content)
    assert [r["label"] for r in rows] == ["Total"] and rows[0]["requests"] == "0"
    assert client.get(report_url()).context["choices"]["feature"] == ["ab-test-claude", "triage"]


def test_staff_with_the_event_permission_do_not_see_every_team(django_user_model, teams):
    """``view_event`` lets a team admin read their own teams' events in the admin; it
    is not "every team" (it used to be, in the report and the API: security.md)."""
    user = staff_user(django_user_model, "analyst")
    user.user_permissions.add(Permission.objects.get(codename="view_event"))
    assert client_for(user).get(report_url()).status_code == 403  # (no team of theirs)
    user.is_superuser = True
    user.save()
    response = client_for(user).get(report_url())
    assert response.status_code == 200
    assert response.context["scope"] == "All teams"
    assert response.context["report"].total.requests == 11


def test_staff_without_teams_are_refused_and_not_linked(django_user_model, teams):
    client = client_for(staff_user(django_user_model, "intern"))
    assert client.get(report_url()).status_code == 403
    assert reverse(REPORT) not in client.get(reverse("admin:index")).content.decode()


def test_non_staff_are_sent_to_the_login_page(django_user_model, teams):
    user = django_user_model.objects.create_user("member", password="pw")
    TeamMembership.objects.create(user=user, team=teams["support"], role="admin")
    response = client_for(user).get(report_url())
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]
    assert Client().get(report_url("format=csv")).status_code == 302
