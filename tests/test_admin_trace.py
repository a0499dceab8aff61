"""The admin's trace page: one request's LLM calls on a timeline, with their totals.

Calls are made with real ``openai`` / ``anthropic`` SDK clients and a real LangChain chat
model against the loopback fake; the page is read through the admin as a superuser, a
team admin and other staff.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from urllib.parse import urlencode

import openai
import pytest
from django.urls import reverse
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_openai import ChatOpenAI

from fluxgate_django import BudgetExceeded, flush, track_anthropic, track_openai, tracking_context
from fluxgate_django.models import Budget, Event, Team, TeamMembership
from fluxgate_django.reports.export import usd
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateHandler

pytestmark = pytest.mark.django_db

MSGS = [{"role": "user", "content": "Plan a trip to Lisbon."}]


def trace_url(**query):
    return f"{reverse('admin:fluxgate_trace')}?{urlencode(query)}"


@pytest.fixture
def request_calls(openai_client, anthropic_client, fake):
    """One request of team search: an OpenAI call, a failed one, an Anthropic call with
    cache tokens, a call refused by a feature budget; and calls of other requests/teams."""
    search = Team.objects.create(name="Search", slug="search")
    growth = Team.objects.create(name="Growth", slug="growth")
    oai = track_openai(openai_client.with_options(max_retries=0))
    claude = track_anthropic(anthropic_client)
    Budget.objects.create(
        team=search, feature="expensive", period="day", limit_usd=Decimal("0.000001")
    )
    with tracking_context(team="search", feature="plan", request_id="req-42"):
        fake.enqueue(FakeReply(input_tokens=900, output_tokens=120, delay=0.05))
        oai.chat.completions.create(model="gpt-4o", messages=MSGS)
        fake.enqueue(FakeReply(status=500, error_message="overloaded"))
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="gpt-4o", messages=MSGS)
        fake.enqueue(FakeReply(input_tokens=300, cache_write_tokens=200, cached_tokens=100))
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=300, messages=MSGS)
        with tracking_context(feature="expensive"), pytest.raises(BudgetExceeded):
            oai.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=900)
    with tracking_context(team="search", request_id="req-other"):
        oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    with tracking_context(team="growth", request_id="req-42"):  # same id, another team
        oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    flush()
    return search, growth


def cells(html: str) -> list[str]:
    body = html.split('<table class="fg-table" id="fg-calls">', 1)[1].split("</table>", 1)[0]
    return [r for r in body.split("<tbody>", 1)[1].split("</tr>") if "<td" in r]


def test_one_request_its_calls_and_totals(request_calls, admin_client):
    response = admin_client.get(trace_url(request_id="req-42"))
    assert response.status_code == 200
    html = response.content.decode()
    rows = cells(html)
    events = list(Event.objects.filter(request_id="req-42").order_by("created_at", "id"))
    assert len(events) == 5 and len(rows) == 5  # the superuser sees both teams' calls
    # Ordered by start, each linking to its event, its exact cost in the title.
    for row, event in zip(rows, events, strict=True):
        assert reverse("admin:fluxgate_django_event_change", args=[event.pk]) in row
        assert event.status in row
        if event.cost_usd is not None:
            assert f'title="{event.cost_usd.normalize():f}"' in row
    costs = [e.cost_usd for e in events if e.cost_usd is not None]
    total = sum(costs, Decimal(0))
    assert total > 0
    summary = dict(re.findall(r'fg-k">([^<]+)</div><div class="fg-v">([^<]+)<', html))
    assert summary["Calls"] == "5"
    assert summary["Failed or refused"] == "2"
    assert summary["Tokens in / out"] == (
        f"{sum(e.input_tokens for e in events):,} / {sum(e.output_tokens for e in events):,}"
    )
    assert summary["Cost"] == usd(total)
    # The timeline: each bar spans its call, on an axis from the first start to the last end
    # (an event's created_at is when its call ended).
    bars = re.findall(r'fg-span[^"]*" style="left: ([0-9.]+)%; width: ([0-9.]+)%', html)
    starts = [e.created_at - dt.timedelta(milliseconds=e.latency_ms or 0) for e in events]
    origin, end = min(starts), max(e.created_at for e in events)
    length = (end - origin).total_seconds() * 1000
    assert len(bars) == 5
    for (left, width), event, start in zip(bars, events, starts, strict=True):
        offset = (start - origin).total_seconds() * 1000
        assert float(left) == pytest.approx(offset * 100 / length, abs=0.01)
        assert float(width) == pytest.approx(
            max((event.latency_ms or 0) * 100 / length, 0.4), abs=0.01
        )


def test_a_team_admin_sees_only_their_teams_calls(request_calls, client, django_user_model):
    search, growth = request_calls
    user = django_user_model.objects.create_user("lead", "lead@example.com", "pw", is_staff=True)
    TeamMembership.objects.create(user=user, team=growth, role=TeamMembership.Role.ADMIN)
    client.force_login(user)
    rows = cells(client.get(trace_url(request_id="req-42")).content.decode())
    [growth_event] = Event.objects.filter(request_id="req-42", team=growth)
    assert len(rows) == 1
    assert reverse("admin:fluxgate_django_event_change", args=[growth_event.pk]) in rows[0]
    # Staff who administer no team: refused.
    other = django_user_model.objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
    TeamMembership.objects.create(user=other, team=search)  # a member, not an admin
    client.force_login(other)
    assert client.get(trace_url(request_id="req-42")).status_code == 403


def test_linked_from_the_event_list_the_event_and_the_report(request_calls, admin_client):
    event = Event.objects.filter(request_id="req-other").get()
    listing = admin_client.get(reverse("admin:fluxgate_django_event_changelist")).content.decode()
    assert trace_url(request_id="req-other").replace("&", "&amp;") in listing
    page = admin_client.get(
        reverse("admin:fluxgate_django_event_change", args=[event.pk])
    ).content.decode()
    assert trace_url(request_id="req-other") in page
    report = admin_client.get(reverse("admin:fluxgate_report")).content.decode()
    assert f'action="{reverse("admin:fluxgate_trace")}"' in report
    # The report's form asks by key and value.
    rows = cells(admin_client.get(trace_url(key="request_id", value="req-other")).content.decode())
    assert len(rows) == 1


def test_a_langchain_run_with_nested_chains(fake, admin_client):
    """An agent-like outer run calling an inner chain twice: its trace is both calls,
    though each call's parent is the inner chain's run."""
    Team.objects.create(name="Docs", slug="docs")
    llm = ChatOpenAI(model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url)
    inner = ChatPromptTemplate.from_messages([("user", "Summarise {text}")]) | llm

    def agent(question: str, config: RunnableConfig) -> str:
        first = inner.invoke({"text": question}, config=config)
        return str(inner.invoke({"text": first.content}, config=config).content)

    outer = RunnableLambda(agent)
    run_id = uuid.uuid4()
    handler = FluxGateHandler(team="docs", feature="docs")
    outer.invoke("the design", config={"callbacks": [handler], "run_id": run_id})
    inner.invoke({"text": "another run"}, config={"callbacks": [handler]})
    flush()
    calls = Event.objects.filter(metadata__root_run_id=str(run_id)).order_by("created_at")
    assert calls.count() == 2 and Event.objects.count() == 3
    assert all(e.parent_run_id not in ("", str(run_id)) for e in calls)  # inner chains'
    rows = cells(admin_client.get(trace_url(run_id=str(run_id))).content.decode())
    assert len(rows) == 2
    for row, event in zip(rows, calls, strict=True):
        assert reverse("admin:fluxgate_django_event_change", args=[event.pk]) in row
    # Each event's own trace link leads to its root run's trace.
    page = admin_client.get(
        reverse("admin:fluxgate_django_event_change", args=[calls[0].pk])
    ).content.decode()
    assert trace_url(run_id=str(run_id)) in page


def test_asking_nothing_or_two_things(admin_client):
    assert admin_client.get(reverse("admin:fluxgate_trace")).status_code == 200  # the form
    response = admin_client.get(trace_url(request_id="a", conversation_id="b"))
    assert response.status_code == 400
    assert b"Give one of" in response.content
    empty = admin_client.get(trace_url(request_id="nothing-here"))
    assert empty.status_code == 200 and b"No calls found" in empty.content
