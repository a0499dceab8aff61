"""``GET fluxgate/metrics``: Prometheus' own parser reads it, and its numbers are the report's.

Events come from real ``openai`` SDK calls against the loopback fake; the figures are
compared with the cost report (``reports.breakdown``) and the budget counters.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from fluxgate_django import BudgetExceeded, flush, track_openai, tracking_context
from fluxgate_django.models import ApiKey, Budget, Team, TeamMembership
from fluxgate_django.money import from_units
from fluxgate_django.reports.queries import breakdown
from fluxgate_django.service.breaker import CircuitBreaker
from fluxgate_django.testing import FakeReply

pytestmark = pytest.mark.django_db

MSGS = [{"role": "user", "content": "Write a haiku about rain."}]
URL = "/fluxgate/metrics"


@pytest.fixture
def site(openai_client, fake):
    """Two teams' calls: successes, a failure, a budget refusal."""
    search = Team.objects.create(name="Search", slug="search")
    growth = Team.objects.create(name="Growth", slug="growth")
    client = track_openai(openai_client.with_options(max_retries=0))
    replies = [
        ("search", "summarize", "gpt-4o", FakeReply(input_tokens=1200, cached_tokens=200)),
        ("search", "summarize", "gpt-4o", FakeReply(input_tokens=800, output_tokens=90)),
        ("search", "chat", "gpt-4o-mini", FakeReply(input_tokens=50, output_tokens=5)),
        ("growth", "ads", "gpt-4o-mini", FakeReply(input_tokens=70, output_tokens=7)),
        ("growth", "ads", "gpt-4o-mini", FakeReply(status=500, error_message="boom")),
    ]
    for team, feature, model, reply in replies:
        fake.enqueue(reply)
        with tracking_context(team=team, feature=feature):
            try:
                client.chat.completions.create(model=model, messages=MSGS)
            except Exception as exc:  # the failed call is an event too
                assert reply.status == 500, exc
    budget = Budget.objects.create(team=growth, period="day", limit_usd=Decimal("0.0001"))
    with tracking_context(team="growth", feature="ads"), pytest.raises(BudgetExceeded):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=4000)
    flush()
    return search, growth, budget


def scrape(client, **extra):
    response = client.get(URL, **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def series(samples, name, **labels):
    """Samples of ``name`` whose labels include ``labels``, by their full label sets."""
    return {
        key[1]: value
        for key, value in samples.items()
        if key[0] == name and set(labels.items()) <= set(key[1])
    }


@pytest.fixture
def superuser_client(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_the_figures_equal_the_report(site, superuser_client):
    search, growth, budget = site
    samples = scrape(superuser_client)
    today = dt.date.today()
    for team in (search, growth):
        report = breakdown("model", today, today, teams=[team.pk])
        assert report.rows
        for row in report.rows:
            labels = {"team": team.slug, "model": row.key}
            cost = sum(series(samples, "fluxgate_cost_usd_total", **labels).values())
            assert cost == pytest.approx(float(from_units(row.cost_units)), rel=1e-12)
            requests = series(samples, "fluxgate_requests_total", **labels)
            by_status = {dict(k)["status"]: 0.0 for k in requests}
            for key, value in requests.items():
                by_status[dict(key)["status"]] += value
            assert by_status["success"] + by_status["error"] == row.requests
            assert by_status["error"] == row.errors
            assert by_status["budget_exceeded"] == row.budget_blocked
            for kind, field in [("input", "input_tokens"), ("cache_read", "cache_read_tokens")]:
                got = sum(series(samples, "fluxgate_tokens_total", type=kind, **labels).values())
                assert got == getattr(row, field)
            buckets = series(
                samples, "fluxgate_request_latency_seconds_bucket", le="+Inf", **labels
            )
            assert sum(buckets.values()) == sum(row.latency_histogram)
    # The report's own total for the site, and the numbers behind it, are non-trivial.
    total = breakdown("team", today, today)
    assert total.total.requests == 5 and total.total.budget_blocked == 1
    assert sum(series(samples, "fluxgate_cost_usd_total").values()) == pytest.approx(
        float(from_units(total.total.cost_units)), rel=1e-12
    )
    # The budget's gauges are its counter's.
    counter = budget.current_counter()
    labels = {"team": "growth", "period": "day", "budget": str(budget.pk)}
    [spent] = series(samples, "fluxgate_budget_spent_usd", **labels).values()
    [limit] = series(samples, "fluxgate_budget_limit_usd", **labels).values()
    assert (spent, limit) == (float(counter.spent), 0.0001)
    assert counter.spent > 0


def test_no_user_or_request_ids_in_labels(site, superuser_client):
    samples = scrape(superuser_client)
    names = {name for key in samples for name, _ in key[1]}
    assert names <= {
        "team",
        "feature",
        "provider",
        "model",
        "type",
        "status",
        "le",
        "period",
        "budget",
        "target",
    }


def test_an_open_circuit_is_a_gauge(site, superuser_client, settings):
    settings.FLUXGATE = {
        **settings.FLUXGATE,
        "PROVIDERS": {"openai": {"api_key": "sk-test"}},
        "ROUTES": {"summarize": {"models": ["openai/gpt-4o", "openai/gpt-4o-mini"]}},
    }
    breaker = CircuitBreaker()
    for _ in range(breaker.failures):
        breaker.record_failure("openai/gpt-4o")
    samples = scrape(superuser_client)
    assert samples[("fluxgate_circuit_open", (("target", "openai/gpt-4o"),))] == 1.0
    assert samples[("fluxgate_circuit_open", (("target", "openai/gpt-4o-mini"),))] == 0.0


def test_who_may_read_it(site, client):
    search, growth, _ = site
    # Anonymous, from an address not allowed: refused.
    assert client.get(URL).status_code in (401, 403)
    # A team key without the metrics scope: refused; with it: its own team only.
    key, secret = ApiKey.objects.create_key(team=search, name="grafana")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert client.get(URL, **auth).status_code == 403
    key.may_read_metrics = True
    key.save()
    teams = {dict(k[1]).get("team") for k in scrape(client, **auth)}
    assert teams == {"search"}
    # A staff member of one team: that team only; a plain member: refused.
    staff = get_user_model().objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
    TeamMembership.objects.create(user=staff, team=growth)
    client.force_login(staff)
    assert {dict(k[1]).get("team") for k in scrape(client)} == {"growth"}
    member = get_user_model().objects.create_user("dev", "dev@example.com", "pw")
    TeamMembership.objects.create(user=member, team=growth)
    client.force_login(member)
    assert client.get(URL).status_code == 403
    client.logout()
    # A scraper's address in METRICS_ALLOWED_IPS: the whole site.
    allow = {**settings.FLUXGATE, "METRICS_ALLOWED_IPS": ["10.0.0.0/8"]}
    with override_settings(FLUXGATE=allow):
        assert client.get(URL, REMOTE_ADDR="192.168.1.9").status_code in (401, 403)
        allowed = scrape(client, REMOTE_ADDR="10.1.2.3")
    assert {dict(k[1]).get("team") for k in allowed} >= {"search", "growth"}
