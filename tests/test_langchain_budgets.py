"""FluxGateHandler in LangGraph graphs, and budgets stopping a runaway agent loop."""

from __future__ import annotations

import asyncio
import logging
import operator
from decimal import Decimal
from typing import Annotated, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

import fluxgate_django
from fluxgate_django import BudgetExceeded, counters, ledger, teams
from fluxgate_django.models import Budget, Event, SpendCounter, Team
from fluxgate_django.testing import FakeReply
from fluxgate_langchain import FluxGateHandler

langgraph = pytest.importorskip("langgraph.graph")

pytestmark = pytest.mark.django_db

# gpt-4o: $2.50 / MTok in, $10 / MTok out. 1000 in + 100 out = $0.0035 a call.
CALL = FakeReply(input_tokens=1000, output_tokens=100)
CALL_COST = Decimal("0.0035")


class AgentState(TypedDict):
    messages: Annotated[list, operator.add]
    turns: int


def agent_graph(llm: ChatOpenAI, max_turns: int):
    """An agent loop: the "agent" node calls the model, "tools" acts, until ``max_turns``."""

    def agent(state: AgentState) -> dict:
        reply = llm.invoke(state["messages"])
        return {"messages": [reply], "turns": state["turns"] + 1}

    async def aagent(state: AgentState) -> dict:
        reply = await llm.ainvoke(state["messages"])
        return {"messages": [reply], "turns": state["turns"] + 1}

    def tools(state: AgentState) -> dict:
        return {"messages": [HumanMessage(f"tool result {state['turns']}")]}

    def route(state: AgentState) -> str:
        return langgraph.END if state["turns"] >= max_turns else "tools"

    graph = langgraph.StateGraph(AgentState)
    graph.add_node("agent", _dual(agent, aagent))
    graph.add_node("tools", tools)
    graph.add_edge(langgraph.START, "agent")
    graph.add_conditional_edges("agent", route)
    graph.add_edge("tools", "agent")
    return graph.compile()


def _dual(sync_fn, async_fn):
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(sync_fn, afunc=async_fn, name="agent")


@pytest.fixture(autouse=True)
def _fresh_budget_cache():
    ledger.clear_cache()
    teams.forget()
    yield
    ledger.clear_cache()
    teams.forget()


@pytest.fixture
def llm(fake):
    from langchain_openai.chat_models import _client_utils

    _client_utils._cached_async_httpx_client.cache_clear()
    return ChatOpenAI(
        model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url, max_retries=0,
        max_tokens=100,
    )  # fmt: skip


@pytest.fixture
def team():
    return Team.objects.create(name="Search", slug="search")


def test_graph_records_one_event_per_model_call_with_the_node_as_step(llm, fake):
    fake.default_reply = CALL
    handler = FluxGateHandler(feature="research-agent", user="u1")
    result = agent_graph(llm, max_turns=3).invoke(
        {"messages": [HumanMessage("Find the cheapest model.")], "turns": 0},
        config={"callbacks": [handler]},
    )
    assert result["turns"] == 3 and isinstance(result["messages"][-1], AIMessage)
    events = list(Event.objects.filter(source="langchain"))
    assert len(events) == 3
    assert {(e.step, e.feature, e.end_user_id) for e in events} == {
        ("agent", "research-agent", "u1")
    }
    assert {e.cost_usd for e in events} == {CALL_COST}
    assert all(e.parent_run_id for e in events)
    assert handler.runs_in_flight == 0 and len(handler._chains) == 0


def test_runaway_graph_loop_is_stopped_by_the_budget_before_spending(llm, fake, team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    fake.default_reply = CALL
    handler = FluxGateHandler(team="search", feature="agent")
    with pytest.raises(BudgetExceeded):
        agent_graph(llm, max_turns=100).invoke(
            {"messages": [HumanMessage("Loop forever.")], "turns": 0},
            config={"callbacks": [handler], "recursion_limit": 500},
        )
    succeeded = Event.objects.filter(source="langchain", status="SUCCESS")
    blocked = Event.objects.filter(source="langchain", status="BUDGET_EXCEEDED")
    assert 0 < succeeded.count() < 10
    assert fake.request_count == succeeded.count()  # the blocked call never reached OpenAI
    assert blocked.count() == 1 and blocked.get().cost_usd == 0
    assert blocked.get().run_id and blocked.get().parent_run_id  # the refused run, in its graph
    counter = SpendCounter.objects.get(budget=budget)
    # Every reservation settled to the real cost: spend == the events' costs, nothing held.
    assert counter.spent == CALL_COST * succeeded.count()
    assert counter.reserved == 0
    assert handler.runs_in_flight == 0


def test_budget_not_enforced_when_the_handler_opts_out(llm, fake, team):
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.000001"))
    fake.default_reply = CALL
    handler = FluxGateHandler(team="search", enforce_budgets=False)
    llm.invoke("hi", config={"callbacks": [handler]})
    assert Event.objects.get(source="langchain").status == "SUCCESS"


def test_failed_call_releases_its_reservation(llm, fake, team):
    import openai

    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("1"))
    fake.enqueue(FakeReply(status=500))
    with pytest.raises(openai.InternalServerError):
        llm.invoke("hi", config={"callbacks": [FluxGateHandler(team="search")]})
    counter = SpendCounter.objects.get(budget=budget)
    assert (counter.spent, counter.reserved) == (0, 0)


@pytest.mark.django_db(transaction=True)
def test_async_graph_loop_is_stopped_by_the_budget(llm, fake, team):
    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.02"))
    fake.default_reply = CALL
    handler = FluxGateHandler(team="search", feature="agent")

    async def scenario():
        with pytest.raises(BudgetExceeded):
            await agent_graph(llm, max_turns=100).ainvoke(
                {"messages": [HumanMessage("Loop forever.")], "turns": 0},
                config={"callbacks": [handler], "recursion_limit": 500},
            )

    asyncio.run(scenario())
    fluxgate_django.flush()  # on a loop, the sync recorder writes in a helper thread
    succeeded = Event.objects.filter(source="langchain", status="SUCCESS").count()
    assert 0 < succeeded < 10 and fake.request_count == succeeded
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.spent == CALL_COST * succeeded and counter.reserved == 0


def test_incomplete_streamed_usage_charges_the_budget_its_estimate(llm, fake, team, monkeypatch):
    """A streamed ChatAnthropic whose input count came out 0 has cost=None: the budget is
    charged the reservation's estimate, never 0 (a runaway streaming loop must still stop)."""
    from langchain_anthropic import ChatAnthropic

    from tests.test_langchain import ANTHROPIC_REPLY, strip_message_delta_input

    budget = Budget.objects.create(team=team, period="day", limit_usd=Decimal("5"))
    strip_message_delta_input(monkeypatch)
    fake.enqueue(FakeReply(**ANTHROPIC_REPLY))
    anthropic_llm = ChatAnthropic(
        model="claude-sonnet-4-6", api_key="sk-ant-test", base_url=fake.anthropic_base_url,
        max_retries=0, max_tokens=1000,
    )  # fmt: skip
    list(anthropic_llm.stream("hi", config={"callbacks": [FluxGateHandler(team="search")]}))
    event = Event.objects.get(source="langchain")
    assert (event.cost_usd, event.cost_source) == (None, "usage-incomplete")
    counter = SpendCounter.objects.get(budget=budget)
    assert counter.spent > 0 and counter.reserved == 0  # charged the estimate, not 0


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_budget_store_refuses_the_call_sync_and_async(llm, fake, team, monkeypatch):
    """``BudgetStoreUnavailable`` is a ``CallRefused`` (not a ``BudgetExceeded``): it leaves
    the hook like a budget refusal, in sync and async runs, and nothing is sent."""
    from django.db import OperationalError

    from fluxgate_django.exceptions import BudgetStoreUnavailable, CallRefused

    Budget.objects.create(team=team, period="day", limit_usd=Decimal("1"))

    def unreachable(*args, **kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(counters, "reserve", unreachable)
    handler = FluxGateHandler(team="search")
    with pytest.raises(BudgetStoreUnavailable):
        llm.invoke("hi", config={"callbacks": [handler]})

    async def scenario():
        with pytest.raises(CallRefused):
            await llm.ainvoke("hi", config={"callbacks": [handler]})

    asyncio.run(scenario())
    assert fake.request_count == 0 and handler.runs_in_flight == 0


@pytest.mark.django_db(transaction=True)
def test_a_sync_invoke_on_a_thread_running_a_loop_is_still_refused(llm, fake, team):
    """A notebook: sync ``invoke()`` from code running on an event loop. The sync hook is
    used (LangChain's sync callback manager would swallow a coroutine's exception), so the
    budget still stops the call."""
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.000001"))
    handler = FluxGateHandler(team="search")

    async def cell():
        with pytest.raises(BudgetExceeded):
            llm.invoke("hi", config={"callbacks": [handler]})

    asyncio.run(cell())
    fluxgate_django.flush()
    assert fake.request_count == 0 and handler.runs_in_flight == 0
    assert Event.objects.get(source="langchain").status == "BUDGET_EXCEEDED"


def _refused(mode: str, llm: ChatOpenAI, handler: FluxGateHandler) -> None:
    config = {"callbacks": [handler]}
    if mode == "invoke":
        llm.invoke("hi", config=config)
    elif mode == "stream":
        list(llm.stream("hi", config=config))
    elif mode == "ainvoke":
        asyncio.run(llm.ainvoke("hi", config=config))
    elif mode == "astream":

        async def consume():
            return [chunk async for chunk in llm.astream("hi", config=config)]

        asyncio.run(consume())
    else:  # a LangGraph agent loop, stopped after the calls its budget allows
        agent_graph(llm, max_turns=100).invoke(
            {"messages": [HumanMessage("Loop forever.")], "turns": 0},
            config={**config, "recursion_limit": 500},
        )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream", "graph"])
def test_a_budget_refusal_is_logged_at_info_by_fluxgate_not_as_a_langchain_error(
    llm, fake, team, caplog, mode
):
    """LangChain reports a callback's exception at WARNING ("Error in
    FluxGateHandler.on_chat_model_start callback") before re-raising it: a budget stopping
    a run is FluxGate's decision, logged once at INFO by FluxGate, and the caller still
    gets ``BudgetExceeded``."""
    limit = Decimal("0.02") if mode == "graph" else Decimal("0.000001")
    Budget.objects.create(team=team, period="day", limit_usd=limit)
    fake.default_reply = CALL
    handler = FluxGateHandler(team="search", feature="agent")
    caplog.set_level(logging.INFO)
    with pytest.raises(BudgetExceeded, match="Budget exceeded for team 'search'"):
        _refused(mode, llm, handler)

    fluxgate_django.flush()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [f"{r.name}: {r.getMessage()}" for r in loud]
    refusals = [r for r in caplog.records if r.name.startswith("fluxgate")]
    assert [(r.name, r.levelno) for r in refusals] == [("fluxgate.langchain", logging.INFO)]
    assert "BudgetExceeded" in refusals[0].getMessage()
    assert "Budget exceeded for team 'search'" in refusals[0].getMessage()
    blocked = Event.objects.get(source="langchain", status="BUDGET_EXCEEDED")
    assert str(blocked.run_id) in refusals[0].getMessage()
    assert fake.request_count == Event.objects.filter(status="SUCCESS").count()
    assert handler.runs_in_flight == 0


def test_other_callback_errors_are_still_reported_by_langchain(llm, fake, team, caplog):
    """Only FluxGate's own refusal is kept out of LangChain's log: another handler's error
    (here an unrelated one, raised after a refusal was logged) is still reported."""
    from langchain_core.callbacks import BaseCallbackHandler

    class Broken(BaseCallbackHandler):
        def on_chat_model_start(self, *args, **kwargs):
            raise ValueError("a bug in another handler")

    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.000001"))
    with pytest.raises(BudgetExceeded):
        llm.invoke("hi", config={"callbacks": [FluxGateHandler(team="search")]})
    fake.default_reply = CALL
    llm.invoke("hi", config={"callbacks": [Broken()]})
    reports = [
        r.getMessage() for r in caplog.records if r.name == "langchain_core.callbacks.manager"
    ]
    assert reports == ["Error in Broken.on_chat_model_start callback: " + repr(
        ValueError("a bug in another handler"))]  # fmt: skip
