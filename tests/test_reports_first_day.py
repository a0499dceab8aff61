"""Issue 15, item 6: what a new user met on the cost report on their first day.

* a Django user is labelled by username (and e-mail), not by pk, in one query per report
  whatever the number of users;
* money is in fixed notation everywhere (page, chart, budgets, CSV): never ``$5.35E-7``;
* ``?compare=…&format=csv`` exports the comparison (what the page shows);
* a one-feature comparison is a 400 asking for at least two;
* the budget table fits a 1400 px window (checked in headless Chromium when installed).

This module is also the URLconf of the Chromium test: the admin, its static files, a
view setting the session cookie (as in ``tests/test_reports_screenshot.py``), and the real
report page with a script appended that measures its boxes.
"""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path, re_path, resolve, reverse
from django.views.static import serve

from fluxgate_django import track_openai, tracking_context
from fluxgate_django.models import Budget, SpendCounter, Team
from fluxgate_django.money import to_units
from fluxgate_django.periods import window_start
from fluxgate_django.recording import write_events
from fluxgate_django.reports import breakdown, compare, last_days, timeseries
from fluxgate_django.reports.chart import stacked_bar_chart
from fluxgate_django.reports.export import to_csv, to_table, usd
from fluxgate_django.testing import FakeReply
from tests.helpers import MSGS, fluxgate_overrides
from tests.test_reports import clear_report_tables, event, noon
from tests.test_reports_screenshot import ADMIN_STATIC, CHROMIUM, chromium, set_session

REPORT = "admin:fluxgate_report"
TINY = Decimal("0.000000535")  # $5.35E-7: what a 1-token call to a cheap model costs


@pytest.fixture(autouse=True)
def _no_runaway_detection():
    with fluxgate_overrides(RUNAWAY_DETECTION={"enabled": False}):
        yield


def csv_rows(content: bytes | str) -> list[dict[str, str]]:
    text = content.decode() if isinstance(content, bytes) else content
    return list(csv.DictReader(io.StringIO(text)))


def report(client: Client, query: str) -> Any:
    return client.get(reverse(REPORT) + "?" + query)


# -- users by name ---------------------------------------------------------------------------


def user_events(users: list[Any], **fields: Any) -> list[Any]:
    """One event per user, attributed as the middleware attributes a request's user."""
    return [
        event(
            provider="openai",
            model="gpt-4o",
            feature="chat",
            user_pk=u.pk,
            end_user_id=str(u.pk),
            cost_usd=Decimal("0.01") * (i + 1),
            **fields,
        )
        for i, u in enumerate(users)
    ]


@pytest.mark.django_db
def test_django_users_are_labelled_by_username_and_email(django_user_model):
    clear_report_tables()
    alice = django_user_model.objects.create_user("alice", email="alice@example.com")
    bob = django_user_model.objects.create_user("bob")  # no e-mail address
    # A user with no event of theirs: an API client's end user "<carol's pk>" isn't carol.
    carol = django_user_model.objects.create_user("carol", email="carol@example.com")
    write_events(
        [
            *user_events([alice, bob]),
            event(provider="openai", model="gpt-4o", end_user_id=str(carol.pk), cost_usd=TINY),
            event(provider="openai", model="gpt-4o", end_user_id="u-42", cost_usd=TINY),
        ]
    )
    rows = {r.key: r.label for r in breakdown("user", *last_days(1))}
    assert rows == {
        str(alice.pk): "alice (alice@example.com)",
        str(bob.pk): "bob",
        str(carol.pk): str(carol.pk),
        "u-42": "u-42",
    }
    # The chart's series carry the same labels; the keys stay the ids (filters use them).
    series = {s.key: s.label for s in timeseries("user", *last_days(1)).series}
    assert series[str(alice.pk)] == "alice (alice@example.com)"
    assert breakdown("feature", *last_days(1), filters={"user": [str(bob.pk)]}).total.requests == 1


@pytest.mark.django_db
def test_a_tracked_call_by_a_logged_in_user_shows_their_name(
    django_user_model, openai_client, fake
):
    clear_report_tables()
    dana = django_user_model.objects.create_user("dana", email="dana@example.com")
    fake.enqueue(FakeReply(text="ok", input_tokens=10, output_tokens=2))
    with tracking_context(user=dana, feature="chat"):
        track_openai(openai_client).chat.completions.create(model="gpt-4o", messages=MSGS)
    (row,) = breakdown("user", *last_days(1)).rows
    assert (row.key, row.label) == (str(dana.pk), "dana (dana@example.com)")


@pytest.mark.django_db
def test_user_labels_cost_one_query_however_many_users(django_user_model):
    def queries_for_report(count: int) -> int:
        clear_report_tables()
        django_user_model.objects.all().delete()
        users = [
            django_user_model.objects.create_user(f"user{i}", email=f"u{i}@example.com")
            for i in range(count)
        ]
        write_events(user_events(users))
        with CaptureQueriesContext(connection) as captured:
            rows = breakdown("user", *last_days(1)).rows
        assert sorted(r.label for r in rows) == sorted(
            f"user{i} (u{i}@example.com)" for i in range(count)
        )
        return len(captured)

    assert queries_for_report(2) == queries_for_report(12) <= 3


@pytest.mark.django_db
def test_the_admin_page_and_its_csv_show_usernames(admin_client, django_user_model):
    clear_report_tables()
    erin = django_user_model.objects.create_user("erin", email="erin@example.com")
    write_events(user_events([erin]))
    html = report(admin_client, "by=user").content.decode()
    assert "erin (erin@example.com)" in html
    rows = csv_rows(report(admin_client, "by=user&format=csv").content)
    assert [(r["key"], r["label"]) for r in rows[:-1]] == [
        (str(erin.pk), "erin (erin@example.com)")
    ]


# -- money in fixed notation -----------------------------------------------------------------


def set_spend(budget: Budget, *, spent: Decimal, reserved: Decimal) -> None:
    """The budget's current window has ``spent`` and ``reserved`` (in flight)."""
    SpendCounter.objects.update_or_create(
        budget=budget,
        window_start=window_start(budget.period),
        defaults={
            "limit_units": to_units(budget.limit_usd),
            "blocking": budget.action == "block",
            "spent_units": to_units(spent),
            "reserved_units": to_units(reserved),
        },
    )


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("5.35E-7", "$0.000000535"),
        ("1E-10", "$0.0000000001"),
        ("0.000045", "$0.000045"),
        ("0.0123", "$0.0123"),
        ("1234.567", "$1,234.57"),
        ("0", "$0"),
        ("0E-10", "$0"),
    ],
)
def test_usd_is_fixed_notation(amount, text):
    assert usd(Decimal(amount)) == text


@pytest.mark.django_db
def test_tiny_costs_are_never_in_scientific_notation(admin_client):
    clear_report_tables()
    team = Team.objects.create(name="Tiny", slug="tiny")
    budget = Budget.objects.create(team=team, period="month", limit_usd=Decimal("0.00001"))
    set_spend(budget, spent=TINY, reserved=TINY)
    write_events(
        [event(provider="openai", model="gpt-4o-mini", feature="f", team="tiny", cost_usd=TINY)]
    )
    scientific = re.compile(r"\d[eE][-+]?\d")

    html = report(admin_client, "by=feature").content.decode()
    page = html[html.index('id="content-main"') :]
    assert "$0.000000535" in page
    assert 'data-cost="0.000000535"' in page
    budgets = page[page.index('id="fg-budgets"') :]
    assert budgets.count("$0.000000535") == 2  # spent and in flight
    assert "$0.000010" in budgets  # the limit
    assert not scientific.search(re.sub(r"<svg.*?</svg>", "", page, flags=re.S))

    exported = report(admin_client, "by=feature&format=csv").content.decode()
    assert csv_rows(exported)[0]["cost_usd"] == "0.000000535"
    assert not scientific.search(exported)
    rows = breakdown("feature", *last_days(1))
    assert not scientific.search(to_table(rows))
    chart = stacked_bar_chart(timeseries("feature", *last_days(1)))
    assert "$0.000000535</title>" in chart


# -- compare ---------------------------------------------------------------------------------


def ab_events() -> None:
    clear_report_tables()
    write_events(
        [
            event(provider="openai", model="gpt-4o", feature="ab-a", cost_usd=Decimal("0.02")),
            event(provider="openai", model="gpt-4o", feature="ab-a", cost_usd=Decimal("0.02")),
            event(provider="openai", model="gpt-4o", feature="ab-b", cost_usd=Decimal("0.01")),
            event(provider="openai", model="gpt-4o", feature="other", cost_usd=Decimal("5")),
        ]
    )


@pytest.mark.django_db
def test_compare_csv_exports_the_comparison(admin_client):
    ab_events()
    response = report(admin_client, "compare=ab-b,ab-a&format=csv")
    assert response.status_code == 200
    assert "compare" in response["Content-Disposition"]
    rows = csv_rows(response.content)
    expected = compare(["ab-b", "ab-a"], *last_days(30))
    assert [r["key"] for r in rows] == ["ab-b", "ab-a", ""]  # in the order asked, then total
    assert rows[1]["cost_per_request_usd"] == "0.02" and rows[0]["requests"] == "1"
    assert rows[-1]["cost_usd"] == "0.05" == str(expected.total.cost_usd)  # "other" not in it
    assert rows == csv_rows(to_csv(expected))
    # The page links each export: the breakdown's without the comparison, and the comparison's.
    html = report(admin_client, "compare=ab-b,ab-a").content.decode()
    breakdown_link = re.search(r'href="([^"]*)" id="fg-export-csv"', html)
    compare_link = re.search(r'href="([^"]*)" id="fg-export-compare-csv"', html)
    assert breakdown_link and "compare" not in breakdown_link.group(1)
    assert compare_link and "compare=ab-b" in compare_link.group(1).replace("&amp;", "&")
    link = reverse(REPORT) + breakdown_link.group(1).replace("&amp;", "&")
    by_feature = csv_rows(admin_client.get(link).content)
    assert [r["key"] for r in by_feature] == ["other", "ab-a", "ab-b", ""]


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["compare=ab-a", "compare=ab-a,ab-a", "compare=ab-a&compare="])
def test_a_one_feature_comparison_is_a_400_asking_for_two(admin_client, query):
    ab_events()
    response = report(admin_client, query)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="fg-compare-error"' in html and "at least 2 features" in html
    assert 'id="fg-compare-table"' not in html
    exported = report(admin_client, query + "&format=csv")
    assert exported.status_code == 400 and b"at least 2 features" in exported.content
    with pytest.raises(ValueError, match="at least 2"):
        compare(["ab-a", "ab-a"], *last_days(30))


# -- the budget table at 1400 px ---------------------------------------------------------------

LONG_FEATURE = "ab-test-summarize-long-documents-with-claude-sonnet-4-6-and-prompt-caching-v2"
MEASURE = """<script>
window.addEventListener("load", function () {
  var out = {viewport: window.innerWidth, page: document.documentElement.scrollWidth, boxes: {}};
  function scrolls(el) {
    var o = getComputedStyle(el).overflowX; return o === "auto" || o === "scroll";
  }
  ["fg-budgets", "fg-breakdown", "fg-compare", "fg-daily-chart"].forEach(function (id) {
    var box = document.getElementById(id);
    if (!box) return;
    var r = box.getBoundingClientRect(), tables = [];
    box.querySelectorAll("table").forEach(function (t) {
      var clip = t.parentElement; while (clip !== box && !scrolls(clip)) clip = clip.parentElement;
      var shown = (clip === box ? t : clip).getBoundingClientRect();
      tables.push({right: Math.round(t.getBoundingClientRect().right),
                   shownRight: Math.round(shown.right), scrolls: clip !== box});
    });
    out.boxes[id] = {right: Math.round(r.right), tables: tables};
  });
  var pre = document.createElement("pre");
  pre.id = "fg-layout"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def measured_report(request: HttpRequest) -> HttpResponse:
    """The real report page (same request, same user) with the measuring script."""
    match = resolve(reverse(REPORT))
    response = match.func(request, *match.args, **match.kwargs)
    response.render()
    html = response.content.decode().replace("</body>", MEASURE + "</body>")
    return HttpResponse(html)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("_session/<str:key>/", set_session),
    path("_measured/", measured_report),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": str(ADMIN_STATIC)}),
]


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (Debian: apt-get install -y chromium)",
)
@pytest.mark.django_db(transaction=True)
@override_settings(ROOT_URLCONF=__name__, STATIC_URL="/static/", STATIC_ROOT=str(ADMIN_STATIC))
def test_the_budget_table_fits_a_1400_px_window(live_server, tmp_path, django_user_model):
    clear_report_tables()
    Team.objects.all().delete()
    # What a site has: teams with long real names, budgets on long feature names, amounts
    # of every size.
    names = [
        "Customer Support Operations - Europe, Middle East and Africa (EMEA), Tier 2",
        "Search",
        "Data Science",
    ]
    for i, name in enumerate(names):
        team = Team.objects.create(name=name, slug=f"team-{i}")
        for feature, limit in [("", "2500"), (LONG_FEATURE, "0.50")]:
            budget = Budget.objects.create(
                team=team, feature=feature, period="month", limit_usd=Decimal(limit)
            )
            spent = Decimal("1234.5678") if limit == "2500" else TINY
            set_spend(budget, spent=spent, reserved=Decimal("0.0123"))
        write_events(
            [
                event(
                    provider="openai",
                    model="gpt-4o",
                    team=team.slug,
                    feature=LONG_FEATURE,
                    created_at=noon(d),
                    cost_usd=Decimal("12.5"),
                    input_tokens=1_234_567,
                    output_tokens=234_567,
                )
                for d in range(3)
            ]
        )
    admin_user = django_user_model.objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.force_login(admin_user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    url = f"{live_server.url}/_session/{session}/?next=/_measured/%3Frange=30d"

    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url, tmp_path=tmp_path)
    found = re.search(r'<pre id="fg-layout">(.*?)</pre>', dom.stdout.decode(), re.S)
    assert found, "the page did not load (no measurement)"
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert layout["viewport"] == 1400
    assert layout["page"] <= 1400, f"the page scrolls sideways: {layout}"
    budgets = layout["boxes"]["fg-budgets"]
    assert budgets["right"] <= 1400 and budgets["tables"], layout
    # The budget table fits its box (its long names wrap): no scrolling needed to read it.
    assert budgets["tables"][0]["right"] <= budgets["right"], layout
    for box in layout["boxes"].values():
        for table in box["tables"]:
            # Wider than its box only inside a scrolling container that fits the box.
            assert table["shownRight"] <= box["right"], layout
            assert table["right"] <= box["right"] or table["scrolls"], layout


@pytest.mark.django_db
def test_the_report_command_refuses_a_one_feature_compare_with_a_clear_error():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="at least 2"):
        call_command("fluxgate_report", "--compare", "only-one")
