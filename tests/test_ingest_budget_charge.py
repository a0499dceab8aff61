"""Costs a client gives with ingested events count towards the team's budgets only when its
API key ``may_charge_budgets`` (issue 16: an ingest key drove a $1,000 budget to $750,277
with made-up costs and blocked the team's real calls). Events priced by FluxGate count
whatever the key; every event is stored and reported either way. The team's real calls
are made with the openai SDK over HTTP against the fake provider, on a real database."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from fluxgate_django import BudgetExceeded, ledger, track_openai, tracking_context
from fluxgate_django.models import ApiKey, Budget, Event, SpendAnomaly, SpendCounter
from fluxgate_django.periods import window_start
from fluxgate_django.testing import FakeReply
from tests.api_helpers import API, event_payload, key_client, make_budget, make_world, post_json
from tests.helpers import fluxgate_overrides

pytestmark = pytest.mark.django_db

EVENTS = f"{API}events/"
BREAKDOWN = f"{API}reports/breakdown/"
MSGS = [{"role": "user", "content": "Summarise this ticket."}]
# gpt-4o: $2.50 / MTok in, $10 / MTok out.
CALL = FakeReply(input_tokens=1000, output_tokens=100)  # $0.0035
CALL_COST = Decimal("0.0035")
MADE_UP = "5000"


@pytest.fixture
def w():
    return make_world()


@pytest.fixture
def budget(w):
    return make_budget(w.team_a, period="day", limit_usd=Decimal("1000"))


@pytest.fixture
def llm(openai_client):
    return track_openai(openai_client)


def charging_key(w) -> Client:
    """Team a's key, allowed to charge its budgets (saved: the key cache forgets it)."""
    w.key_a.may_charge_budgets = True
    w.key_a.save()
    return w.client("key_a")


def spent(budget: Budget) -> Decimal:
    counter = SpendCounter.objects.filter(budget=budget, window_start=window_start("day"))
    return counter.get().spent if counter.exists() else Decimal(0)


def real_call(llm, fake):
    """One call of the team's own code, through the tracked SDK client."""
    fake.enqueue(CALL)
    with tracking_context(team="a", feature="support"):
        return llm.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)


def test_a_made_up_cost_from_a_key_without_the_flag_is_stored_but_not_charged(w, budget, llm, fake):
    api = w.client("key_a")
    assert w.key_a.may_charge_budgets is False  # the default
    response = post_json(api, EVENTS, event_payload(cost_usd=MADE_UP, feature="support"))

    assert response.status_code == 202, response.json()
    (answer,) = response.json()["events"]
    assert (answer["duplicate"], answer["counts_towards_budgets"]) == (False, False)
    assert (Decimal(answer["cost_usd"]), answer["cost_source"]) == (Decimal(MADE_UP), "client")
    event = Event.objects.get(tracking_id=answer["tracking_id"])
    assert event.cost_usd == Decimal(MADE_UP) and event.team == w.team_a
    assert event.metadata["budget_charged_usd"] == "0"  # what budgets counted, on the event
    assert spent(budget) == 0

    # The report shows it.
    report = api.get(BREAKDOWN, {"by": "feature"}).json()
    assert Decimal(report["total"]["cost_usd"]) == Decimal(MADE_UP)

    # The team's real call still goes through, and is charged.
    resp = real_call(llm, fake)
    assert resp.fluxgate.status.value == "SUCCESS"
    assert fake.request_count == 1
    assert spent(budget) == CALL_COST


def test_with_the_flag_the_cost_is_charged_and_the_next_real_call_is_refused(w, budget, llm, fake):
    api = charging_key(w)
    response = post_json(api, EVENTS, event_payload(cost_usd=MADE_UP, feature="support"))

    assert response.status_code == 202, response.json()
    (answer,) = response.json()["events"]
    assert answer["counts_towards_budgets"] is True
    event = Event.objects.get(tracking_id=answer["tracking_id"])
    assert "budget_charged_usd" not in event.metadata
    assert spent(budget) == Decimal(MADE_UP)

    with pytest.raises(BudgetExceeded) as refused:
        real_call(llm, fake)
    assert fake.request_count == 0  # refused before any provider request
    assert (refused.value.limit, refused.value.spent) == (Decimal("1000"), Decimal(MADE_UP))
    assert Event.objects.filter(status="BUDGET_EXCEEDED", feature="support").count() == 1


@pytest.mark.parametrize("may_charge", [False, True], ids=["no-flag", "flag"])
def test_an_event_priced_by_fluxgate_counts_whatever_the_key(w, llm, fake, may_charge):
    budget = make_budget(w.team_a, period="day", limit_usd=Decimal("1"))
    api = charging_key(w) if may_charge else w.client("key_a")
    # gpt-4o, 200k output tokens: $2.00 by FluxGate's own price (no cost given).
    priced = event_payload(input_tokens=0, output_tokens=200_000, feature="support")
    response = post_json(api, EVENTS, priced)

    assert response.status_code == 202, response.json()
    (answer,) = response.json()["events"]
    assert answer["counts_towards_budgets"] is True
    assert (Decimal(answer["cost_usd"]), answer["cost_source"]) == (Decimal("2"), "genai-prices")
    assert spent(budget) == Decimal("2")
    with pytest.raises(BudgetExceeded):
        real_call(llm, fake)
    assert fake.request_count == 0


def test_a_batch_mixing_both_charges_only_the_priced_events(w, budget):
    api = w.client("key_a")
    batch = [
        event_payload(cost_usd=MADE_UP),
        event_payload(),  # priced here: 1000 in + 500 out = $0.0075
        event_payload(cost_usd="3", cost_source="openrouter"),
        event_payload(feature="search", cost_usd="0.25"),
    ]
    response = post_json(api, EVENTS, {"events": batch})

    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (4, 0)
    counted = [e["counts_towards_budgets"] for e in body["events"]]
    assert counted == [False, True, False, False]
    assert [e["cost_source"] for e in body["events"]] == [
        "client",
        "genai-prices",
        "openrouter",
        "client",
    ]
    assert Event.objects.filter(team=w.team_a).count() == 4
    assert spent(budget) == Decimal("0.0075")

    # Rebuilt from the stored events, and for a budget created afterwards, the spend is
    # the same: what budgets counted, not every cost.
    assert ledger.reconcile(budget).spent == Decimal("0.0075")
    late = make_budget(w.team_a, period="month", limit_usd=Decimal("100"))
    assert SpendCounter.objects.get(budget=late).spent == Decimal("0.0075")

    # The same batch again: all duplicates, nothing more charged.
    again = post_json(api, EVENTS, {"events": batch}).json()
    assert (again["accepted"], again["duplicates"]) == (0, 4)
    assert not any(e["counts_towards_budgets"] for e in again["events"])
    assert spent(budget) == Decimal("0.0075")


def test_the_budget_note_is_fluxgates_not_the_clients(w, budget):
    """A client can't set ``budget_charged_usd`` itself: not to make a priced event (or,
    with the flag, its own cost) count as 0, nor to charge another figure."""
    priced = event_payload(metadata={"budget_charged_usd": "0", "page": "home"})
    response = post_json(w.client("key_a"), EVENTS, priced)
    assert response.status_code == 202, response.json()
    assert response.json()["events"][0]["counts_towards_budgets"] is True
    assert Event.objects.get(tracking_id=priced["tracking_id"]).metadata == {"page": "home"}
    assert spent(budget) == Decimal("0.0075")

    claimed = event_payload(cost_usd="2", metadata={"budget_charged_usd": "0"})
    post_json(charging_key(w), EVENTS, claimed)
    assert Event.objects.get(tracking_id=claimed["tracking_id"]).metadata == {}
    spoofed = event_payload(cost_usd="1", metadata={"budget_charged_usd": "999"})
    post_json(w.client("key_a"), EVENTS, spoofed)  # (flag on: saved above)
    assert spent(budget) == Decimal("3.0075")
    assert ledger.reconcile(budget).spent == Decimal("3.0075")


def test_made_up_costs_do_not_trip_runaway_detection_either(w, llm, fake):
    """Runaway detection (with blocking) counts what budgets count: a key without the
    flag can't get the team's calls blocked as a runaway; with the flag the same spend
    is one."""
    runaway = {
        "enabled": True,
        "window_minutes": 5,
        "baseline_minutes": 60,
        "factor": 5,
        "min_spend_usd": "1.00",
        "block_minutes": 10,
        "cache_alias": "default",
    }
    with fluxgate_overrides(RUNAWAY_DETECTION=runaway):
        response = post_json(w.client("key_a"), EVENTS, event_payload(cost_usd=MADE_UP))
        assert response.status_code == 202
        assert not SpendAnomaly.objects.exists()
        assert real_call(llm, fake).fluxgate.status.value == "SUCCESS"

        response = post_json(charging_key(w), EVENTS, event_payload(cost_usd=MADE_UP))
        assert response.status_code == 202
        assert SpendAnomaly.objects.filter(team=w.team_a).exists()
        with pytest.raises(BudgetExceeded, match="Runaway"):
            real_call(llm, fake)
    assert fake.request_count == 1


def test_a_team_admin_creates_a_charging_key_over_the_api(w, budget):
    admin = w.client("admin_a")
    response = post_json(
        admin, f"{API}api-keys/", {"team": "a", "name": "billing", "may_charge_budgets": True}
    )
    assert response.status_code == 201, response.json()
    assert response.json()["may_charge_budgets"] is True
    plain = post_json(admin, f"{API}api-keys/", {"team": "a", "name": "ci"}).json()
    assert plain["may_charge_budgets"] is False
    keys = admin.get(f"{API}api-keys/").json()["results"]
    listed = {k["name"]: k["may_charge_budgets"] for k in keys}
    assert listed == {"billing": True, "ci": False, "ci-a": False}

    post_json(key_client(plain["secret"]), EVENTS, event_payload(cost_usd="7"))
    assert spent(budget) == 0
    post_json(key_client(response.json()["secret"]), EVENTS, event_payload(cost_usd="7"))
    assert spent(budget) == Decimal("7")


def test_the_flag_is_set_in_the_admin(admin_client, w, budget):
    from django.urls import reverse

    api = w.client("key_a")
    post_json(api, EVENTS, event_payload(cost_usd="1"))  # (the key is now cached)
    assert spent(budget) == 0
    changelist = admin_client.get(reverse("admin:fluxgate_django_apikey_changelist"))
    assert changelist.status_code == 200
    assert "may_charge_budgets" in changelist.content.decode()  # a column and a filter

    change = reverse("admin:fluxgate_django_apikey_change", args=[w.key_a.pk])
    response = admin_client.post(change, {"name": "ci-a", "may_charge_budgets": "on"})
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=w.key_a.pk).may_charge_budgets is True
    post_json(api, EVENTS, event_payload(cost_usd="1"))
    assert spent(budget) == Decimal("1")

    add = reverse("admin:fluxgate_django_apikey_add")
    response = admin_client.post(
        add, {"team": w.team_a.pk, "name": "billing", "may_charge_budgets": "on"}
    )
    assert response.status_code == 302
    assert ApiKey.objects.get(name="billing").may_charge_budgets is True
