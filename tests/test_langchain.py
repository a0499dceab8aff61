"""FluxGateHandler in a Django site: real ChatOpenAI / ChatAnthropic objects talking HTTP to
the loopback fake provider, recorded through the app's pipeline."""

from __future__ import annotations

import asyncio
import logging
import uuid
from decimal import Decimal

import anthropic
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI

import fluxgate_django
from fluxgate_django import Status, track_anthropic, track_openai, tracking_context
from fluxgate_django.models import Event
from fluxgate_django.testing import FakeReply
from fluxgate_django.testing import fake_provider as fake_provider_module
from fluxgate_langchain import FluxGateHandler
from fluxgate_langchain import handler as handler_module
from tests.helpers import fluxgate_overrides

pytestmark = pytest.mark.django_db

# gpt-4o: 1000 prompt tokens (200 of them cached) + 500 output = $0.00725.
OPENAI_REPLY = dict(input_tokens=1000, cached_tokens=200, output_tokens=500)
OPENAI_COST = Decimal("0.00725")
# claude-sonnet-4-6: 1000 uncached input + 1000 cache write + 2000 cache read + 500 output.
ANTHROPIC_REPLY = dict(
    input_tokens=1000, cache_write_tokens=1000, cached_tokens=2000, output_tokens=500
)
ANTHROPIC_COST = Decimal("0.01485")
MSGS = [{"role": "user", "content": "Summarise the design document."}]


@pytest.fixture(autouse=True)
def _fresh_warnings():
    handler_module._warned.clear()
    yield
    handler_module._warned.clear()


@pytest.fixture
def chat_openai(fake):
    return ChatOpenAI(
        model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url, max_retries=0
    )


@pytest.fixture
def chat_anthropic(fake):
    return ChatAnthropic(
        model="claude-sonnet-4-6",
        api_key="sk-ant-test",
        base_url=fake.anthropic_base_url,
        max_retries=0,
    )


def only_event(**filters) -> Event:
    events = list(Event.objects.filter(source="langchain", **filters))
    assert len(events) == 1, events
    return events[0]


def same_accounting(lc: Event, sdk: Event) -> None:
    """A LangChain event and a tracked-SDK event of the same reply say the same thing."""
    for name in (
        "cost_usd",
        "cost_source",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "provider",
        "model",
        "operation",
        "status",
        "finish_reason",
        "streamed",
    ):
        assert getattr(lc, name) == getattr(sdk, name), name


# -- OpenAI --------------------------------------------------------------------------------


def test_openai_invoke_is_priced_like_the_tracked_sdk(chat_openai, openai_client, fake):
    fake.enqueue(FakeReply(**OPENAI_REPLY))
    handler = FluxGateHandler(feature="rag", user="u1", team="search", tags=["beta"])
    message = chat_openai.invoke("What is FluxGate?", config={"callbacks": [handler]})
    assert message.content

    event = only_event()
    assert event.cost_usd == OPENAI_COST
    assert (event.provider, event.model, event.requested_model, event.operation) == (
        "openai",
        "gpt-4o",
        "gpt-4o",
        "chat",
    )
    assert (event.status, event.finish_reason, event.streamed) == ("SUCCESS", "stop", False)
    assert (event.input_tokens, event.cache_read_tokens, event.output_tokens) == (1000, 200, 500)
    assert (event.feature, event.end_user_id, event.tags) == ("rag", "u1", ["beta"])
    assert event.run_id and event.parent_run_id == ""
    assert event.latency_ms > 0 and event.time_to_first_token_ms is None
    assert handler.runs_in_flight == 0

    fake.enqueue(FakeReply(**OPENAI_REPLY))
    sdk = track_openai(openai_client).chat.completions.create(model="gpt-4o", messages=MSGS)
    same_accounting(event, Event.objects.get(tracking_id=sdk.fluxgate.tracking_id))


def test_openai_stream_with_stream_usage_is_priced(fake, openai_client):
    llm = ChatOpenAI(
        model="gpt-4o",
        api_key="sk-test",
        base_url=fake.openai_base_url,
        max_retries=0,
        stream_usage=True,
    )
    fake.enqueue(FakeReply(**OPENAI_REPLY, chunks=4))
    chunks = list(llm.stream("hi", config={"callbacks": [FluxGateHandler(feature="chat")]}))
    assert len(chunks) > 4

    event = only_event()
    assert event.streamed and event.cost_usd == OPENAI_COST
    assert 0 < event.time_to_first_token_ms <= event.latency_ms
    assert event.stream_duration_ms is not None

    fake.enqueue(FakeReply(**OPENAI_REPLY, chunks=4))
    stream = track_openai(openai_client).chat.completions.create(
        model="gpt-4o", messages=MSGS, stream=True, stream_options={"include_usage": True}
    )
    for _ in stream:
        pass
    same_accounting(event, Event.objects.get(tracking_id=stream.fluxgate.tracking_id))


def test_openai_stream_without_usage_is_recorded_unpriced_and_warns_once(chat_openai, fake, caplog):
    handler = FluxGateHandler(feature="chat")
    with caplog.at_level(logging.WARNING, logger="fluxgate"):
        for _ in range(2):
            fake.enqueue(FakeReply(**OPENAI_REPLY))
            list(chat_openai.stream("hi", config={"callbacks": [handler]}))
    events = list(Event.objects.filter(source="langchain"))
    assert len(events) == 2
    for event in events:
        assert event.cost_usd is None
        assert event.cost_source == "usage-missing"
        assert event.streamed and event.model == "gpt-4o" and event.finish_reason == "stop"
    warnings = [r for r in caplog.records if "stream_usage=True" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("finish_reason", "status"),
    [("length", Status.MAX_TOKENS), ("content_filter", Status.CONTENT_FILTER)],
)
def test_openai_finish_reasons_map_like_the_sdk(chat_openai, fake, finish_reason, status):
    fake.enqueue(FakeReply(finish_reason=finish_reason))
    chat_openai.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    event = only_event()
    assert (event.status, event.finish_reason) == (status.value, finish_reason)


def test_openai_reasoning_tokens_are_read(chat_openai, fake):
    fake.enqueue(FakeReply(input_tokens=100, output_tokens=300, reasoning_tokens=200))
    chat_openai.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    event = only_event()
    assert (event.output_tokens, event.reasoning_tokens) == (300, 200)


def test_n_greater_than_one_is_not_double_counted(fake):
    llm = ChatOpenAI(
        model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url, max_retries=0, n=3
    )
    fake.enqueue(FakeReply(**OPENAI_REPLY))
    llm.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    assert only_event().cost_usd == OPENAI_COST


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_invoke_prices_cache_tokens_like_the_tracked_sdk(
    chat_anthropic, anthropic_client, fake
):
    fake.enqueue(FakeReply(**ANTHROPIC_REPLY))
    chat_anthropic.invoke("Review this.", config={"callbacks": [FluxGateHandler(feature="review")]})
    event = only_event()
    assert event.cost_usd == ANTHROPIC_COST
    # LangChain's input_tokens already include cache tokens: nothing is added twice.
    assert (event.input_tokens, event.cache_write_tokens, event.cache_read_tokens) == (
        4000,
        1000,
        2000,
    )
    assert (event.provider, event.model, event.operation, event.finish_reason) == (
        "anthropic",
        "claude-sonnet-4-6",
        "messages",
        "end_turn",
    )

    fake.enqueue(FakeReply(**ANTHROPIC_REPLY))
    msg = track_anthropic(anthropic_client).messages.create(
        model="claude-sonnet-4-6", max_tokens=600, messages=MSGS
    )
    same_accounting(event, Event.objects.get(tracking_id=msg.fluxgate.tracking_id))


def test_anthropic_one_hour_cache_writes_count_as_cache_writes(
    chat_anthropic, anthropic_client, fake
):
    reply = dict(input_tokens=100, cache_write_tokens=200, cache_write_1h_tokens=1000)
    fake.enqueue(FakeReply(**reply))
    chat_anthropic.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    event = only_event()
    assert event.cache_write_tokens == 1200
    assert event.input_tokens == 1300

    fake.enqueue(FakeReply(**reply))
    msg = track_anthropic(anthropic_client).messages.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=MSGS
    )
    sdk = Event.objects.get(tracking_id=msg.fluxgate.tracking_id)
    assert event.cost_usd == sdk.cost_usd  # 1-hour writes at their own (higher) rate
    same_accounting(event, sdk)


def test_anthropic_stream_is_priced_like_the_tracked_sdk(chat_anthropic, anthropic_client, fake):
    fake.enqueue(FakeReply(**ANTHROPIC_REPLY, chunks=3))
    list(chat_anthropic.stream("hi", config={"callbacks": [FluxGateHandler()]}))
    event = only_event()
    assert event.streamed and event.cost_usd == ANTHROPIC_COST
    assert event.time_to_first_token_ms is not None

    fake.enqueue(FakeReply(**ANTHROPIC_REPLY, chunks=3))
    stream = track_anthropic(anthropic_client).messages.create(
        model="claude-sonnet-4-6", max_tokens=600, messages=MSGS, stream=True
    )
    for _ in stream:
        pass
    same_accounting(event, Event.objects.get(tracking_id=stream.fluxgate.tracking_id))


@pytest.mark.parametrize(
    ("stop_reason", "status"),
    [("max_tokens", Status.MAX_TOKENS), ("refusal", Status.CONTENT_FILTER)],
)
def test_anthropic_stop_reasons_map_like_the_sdk(chat_anthropic, fake, stop_reason, status):
    fake.enqueue(FakeReply(finish_reason=stop_reason))
    chat_anthropic.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    assert only_event().status == status.value


def strip_message_delta_input(monkeypatch) -> None:
    """Make the fake answer streams as older API versions did: ``message_delta`` carries only
    ``output_tokens`` (input and cache counts are on ``message_start`` only)."""
    import json

    original = fake_provider_module._SSE_BUILDERS["messages"]

    def builder(turn):
        for event in original(turn):
            if event.startswith(b"event: message_delta"):
                head, data = event.split(b"data: ", 1)
                payload = json.loads(data)
                payload["usage"] = {"output_tokens": payload["usage"]["output_tokens"]}
                event = head + b"data: " + json.dumps(payload).encode() + b"\n\n"
            yield event

    monkeypatch.setitem(fake_provider_module._SSE_BUILDERS, "messages", builder)


@pytest.fixture
def message_delta_without_input(monkeypatch):
    strip_message_delta_input(monkeypatch)


def test_streamed_anthropic_input_zero_is_marked_incomplete_not_undercharged(
    chat_anthropic, fake, caplog, message_delta_without_input
):
    fake.enqueue(FakeReply(**ANTHROPIC_REPLY, chunks=2))
    with caplog.at_level(logging.WARNING, logger="fluxgate"):
        list(chat_anthropic.stream("hi", config={"callbacks": [FluxGateHandler()]}))
    event = only_event()
    assert (event.input_tokens, event.output_tokens) == (0, 500)
    assert event.cost_usd is None  # not the output-only price passing for the call's cost
    assert event.cost_source == "usage-incomplete"
    assert event.metadata["usage_incomplete"] == "input_tokens"
    assert any("langchain#35509" in r.getMessage() for r in caplog.records)


# -- errors and early stops -------------------------------------------------------------------


def test_llm_error_is_recorded_and_propagates_unchanged(chat_openai, chat_anthropic, fake):
    handler = FluxGateHandler(feature="rag")
    fake.enqueue(FakeReply(status=500))
    with pytest.raises(openai.InternalServerError):
        chat_openai.invoke("hi", config={"callbacks": [handler]})
    fake.enqueue(FakeReply(status=400))
    with pytest.raises(anthropic.BadRequestError):
        chat_anthropic.invoke("hi", config={"callbacks": [handler]})

    failed = {e.provider: e for e in Event.objects.filter(source="langchain")}
    assert failed["openai"].status == "ERROR"
    assert failed["openai"].error_type == "InternalServerError"
    assert (failed["openai"].cost_usd, failed["openai"].cost_source) == (None, "not-billed")
    assert failed["anthropic"].status == "MALFORMED_REQUEST"
    assert failed["openai"].feature == "rag"
    assert handler.runs_in_flight == 0


def test_stream_stopped_early_is_recorded_once(chat_openai, chat_anthropic, fake):
    handler = FluxGateHandler()
    for llm in (chat_openai, chat_anthropic):
        fake.enqueue(FakeReply(text="one two three four five six", chunks=6))
        stream = llm.stream("hi", config={"callbacks": [handler]})
        next(stream)
        next(stream)
        stream.close()
    events = list(Event.objects.filter(source="langchain").order_by("created_at"))
    assert [e.provider for e in events] == ["openai", "anthropic"]
    for event in events:
        assert event.metadata["stream_completed"] is False
        assert event.status == "SUCCESS" and event.error_type == ""
        assert (event.cost_usd, event.cost_source) == (None, "stream-incomplete")
    assert handler.runs_in_flight == 0


# -- context --------------------------------------------------------------------------------


def test_context_precedence_run_metadata_then_handler_then_ambient(chat_openai, fake):
    handler = FluxGateHandler(feature="rag", user="u1", metadata={"plan": "pro", "tier": "h"})
    config = {
        "callbacks": [handler],
        "metadata": {
            "fluxgate_user_id": "u2",
            "fluxgate_session_id": "s-run",
            "fluxgate_metadata": {"tier": "run"},
        },
        "tags": ["experiment-7"],
    }
    with tracking_context(
        feature="ambient", user="u0", session_id="s-amb", request_id="req-1",
        metadata={"plan": "free", "region": "eu"}, tags=["web"],
    ):  # fmt: skip
        chat_openai.invoke("hi", config=config)
    event = only_event()
    assert event.feature == "rag"  # handler over ambient
    assert event.end_user_id == "u2"  # run metadata over handler
    assert event.session_id == "s-run"  # run metadata over ambient
    assert event.request_id == "req-1"  # only the ambient context sets it
    assert event.metadata == {"plan": "pro", "region": "eu", "tier": "run"}
    assert event.tags == ["web", "experiment-7"]


def test_ambient_team_is_used_when_the_handler_sets_none(chat_openai, fake, django_user_model):
    from fluxgate_django.models import Team

    team = Team.objects.create(name="Search", slug="search")
    with tracking_context(team="search", feature="search-box"):
        chat_openai.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    event = only_event()
    assert (event.team_id, event.feature) == (team.id, "search-box")


def test_step_is_the_enclosing_chain_and_run_ids_are_stored(chat_openai, fake):
    prompt = ChatPromptTemplate.from_messages([("user", "Summarise {text}")])
    chain = (prompt | chat_openai).with_config(run_name="summarize")
    chain_run_id = uuid.uuid4()
    handler = FluxGateHandler(feature="docs")
    chain.invoke({"text": "the design"}, config={"callbacks": [handler], "run_id": chain_run_id})
    event = only_event()
    assert event.step == "summarize"
    assert event.parent_run_id == str(chain_run_id)
    assert event.run_id and event.run_id != event.parent_run_id
    assert handler.runs_in_flight == 0 and len(handler._chains) == 0

    Event.objects.all().delete()
    with tracking_context(step="ambient-step"):
        chat_openai.invoke("hi", config={"callbacks": [handler]})
    assert only_event().step == "ambient-step"  # no enclosing chain


@pytest.mark.django_db(transaction=True)  # events are written from LangChain's worker threads
def test_batch_runs_in_threads_each_with_its_own_event(chat_openai, fake):
    handler = FluxGateHandler(feature="batch")
    fake.default_reply = FakeReply(**OPENAI_REPLY)
    # One writer thread: SQLite in memory can't take concurrent writes from 4 threads.
    with fluxgate_overrides(RECORDER="thread"):
        with tracking_context(session_id="s-batch"):
            out = chat_openai.batch(
                [f"q{i}" for i in range(8)], config={"callbacks": [handler], "max_concurrency": 4}
            )
        assert fluxgate_django.flush(timeout=10)
    assert len(out) == 8
    events = list(Event.objects.filter(source="langchain"))
    assert len(events) == 8
    assert {e.cost_usd for e in events} == {OPENAI_COST}
    assert {e.session_id for e in events} == {"s-batch"}  # ambient context follows the threads
    assert len({e.run_id for e in events}) == 8
    assert handler.runs_in_flight == 0


def test_lcel_agent_style_loop_records_every_step(chat_openai, fake):
    """A tool-using loop: the model is called until it stops asking for more."""
    fake.default_reply = FakeReply(input_tokens=100, output_tokens=20)
    handler = FluxGateHandler(feature="agent")
    state = {"turns": 0}

    def think(question):
        state["turns"] += 1
        return chat_openai.invoke(question)

    agent = RunnableLambda(think, name="think")
    question = "start"
    while state["turns"] < 4:
        question = agent.invoke(question, config={"callbacks": [handler]}).content
    events = list(Event.objects.filter(source="langchain"))
    assert len(events) == 4
    assert {e.step for e in events} == {"think"}
    assert handler.runs_in_flight == 0


# -- async -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_async_http_clients():
    """langchain-openai and langchain-anthropic cache one async HTTP client per base URL for
    the process; its pooled connections belong to the event loop of the test that made them."""
    from langchain_anthropic import _client_utils as anthropic_clients
    from langchain_openai.chat_models import _client_utils as openai_clients

    openai_clients._cached_async_httpx_client.cache_clear()
    anthropic_clients._get_default_async_httpx_client.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_async_ainvoke_abatch_astream(fake):
    llm = ChatOpenAI(
        model="gpt-4o",
        api_key="sk-test",
        base_url=fake.openai_base_url,
        max_retries=0,
        stream_usage=True,
    )
    anthropic_llm = ChatAnthropic(
        model="claude-sonnet-4-6",
        api_key="sk-ant-test",
        base_url=fake.anthropic_base_url,
        max_retries=0,
    )
    handler = FluxGateHandler(feature="async")

    async def one(i):
        with tracking_context(session_id=f"s{i}"):
            await asyncio.sleep(0.001 * (i % 3))
            await llm.ainvoke(f"q{i}", config={"callbacks": [handler]})

    async def scenario():
        fake.default_reply = FakeReply(**OPENAI_REPLY, chunks=3)
        await asyncio.gather(*(one(i) for i in range(6)))
        await llm.abatch(["a", "b", "c"], config={"callbacks": [handler]})
        async for _ in llm.astream("s", config={"callbacks": [handler]}):
            pass
        fake.default_reply = FakeReply(**ANTHROPIC_REPLY, chunks=3)
        async for _ in anthropic_llm.astream("s", config={"callbacks": [handler]}):
            pass
        await anthropic_llm.ainvoke("s", config={"callbacks": [handler]})

    asyncio.run(scenario())
    fluxgate_django.flush()  # on a loop, the sync recorder writes in a helper thread
    events = list(Event.objects.filter(source="langchain"))
    assert len(events) == 12
    assert {e.session_id for e in events if e.session_id} == {f"s{i}" for i in range(6)}
    openai_costs = {e.cost_usd for e in events if e.provider == "openai"}
    assert openai_costs == {OPENAI_COST}
    assert {e.cost_usd for e in events if e.provider == "anthropic"} == {ANTHROPIC_COST}
    assert sum(e.streamed for e in events) == 2
    assert handler.runs_in_flight == 0


@pytest.mark.django_db(transaction=True)
def test_async_error_and_early_break(fake):
    llm = ChatOpenAI(
        model="gpt-4o", api_key="sk-test", base_url=fake.openai_base_url, max_retries=0
    )
    handler = FluxGateHandler()

    async def scenario():
        fake.enqueue(FakeReply(status=503))
        with pytest.raises(openai.InternalServerError):
            await llm.ainvoke("x", config={"callbacks": [handler]})
        fake.enqueue(FakeReply(text="a b c d e f", chunks=6))
        stream = llm.astream("x", config={"callbacks": [handler]})
        async for _ in stream:
            break
        await stream.aclose()

    asyncio.run(scenario())
    fluxgate_django.flush()  # on a loop, the sync recorder writes in a helper thread
    events = {e.status: e for e in Event.objects.filter(source="langchain")}
    assert set(events) == {"ERROR", "SUCCESS"}
    assert events["SUCCESS"].metadata["stream_completed"] is False
    assert handler.runs_in_flight == 0


# -- never raises ------------------------------------------------------------------------------


def test_a_broken_recorder_never_breaks_the_run(chat_openai, fake, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("recorder is broken")

    monkeypatch.setattr("fluxgate_django.builder.make_record", broken)
    fake.enqueue(FakeReply())
    with fluxgate_overrides(RAISE_ERRORS=False), caplog.at_level(logging.ERROR):
        message = chat_openai.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    assert message.content
    assert any("recording a LangChain run" in r.getMessage() for r in caplog.records)


def test_prompts_and_completions_are_stored_only_when_asked(chat_openai, fake):
    fake.enqueue(FakeReply(), FakeReply())
    chat_openai.invoke("secret question", config={"callbacks": [FluxGateHandler()]})
    assert only_event().content is None
    Event.objects.all().delete()
    with fluxgate_overrides(STORE_CONTENT=True):
        chat_openai.invoke("the question", config={"callbacks": [FluxGateHandler()]})
    assert only_event().content == {
        "request": [[{"role": "human", "content": "the question"}]],
        "response": "Hello from the fake provider.",
    }


def test_chat_openai_on_the_responses_api(fake, openai_client):
    llm = ChatOpenAI(
        model="gpt-4o",
        api_key="sk-test",
        base_url=fake.openai_base_url,
        max_retries=0,
        use_responses_api=True,
    )
    fake.enqueue(FakeReply(**OPENAI_REPLY, finish_reason="length"))
    llm.invoke("hi", config={"callbacks": [FluxGateHandler()]})
    event = only_event()
    assert (event.operation, event.status, event.finish_reason) == (
        "responses",
        "MAX_TOKENS",
        "max_output_tokens",
    )
    assert event.cost_usd == OPENAI_COST

    fake.enqueue(FakeReply(**OPENAI_REPLY, finish_reason="length"))
    response = track_openai(openai_client).responses.create(model="gpt-4o", input="hi")
    same_accounting(event, Event.objects.get(tracking_id=response.fluxgate.tracking_id))

    Event.objects.all().delete()
    fake.enqueue(FakeReply(**OPENAI_REPLY, chunks=2))
    list(llm.stream("hi", config={"callbacks": [FluxGateHandler()]}))
    event = only_event()
    assert (event.status, event.finish_reason, event.streamed) == ("SUCCESS", "completed", True)
    assert event.cost_usd == OPENAI_COST


def test_a_broken_start_hook_never_breaks_the_run(chat_openai, fake, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("context is broken")

    monkeypatch.setattr(FluxGateHandler, "_context", broken)
    fake.enqueue(FakeReply())
    handler = FluxGateHandler()
    with fluxgate_overrides(RAISE_ERRORS=False), caplog.at_level(logging.ERROR):
        assert chat_openai.invoke("hi", config={"callbacks": [handler]}).content
    assert not Event.objects.exists() and handler.runs_in_flight == 0
    assert any("starting a LangChain run" in r.getMessage() for r in caplog.records)


def test_remote_mode_errors_are_logged_not_raised(chat_openai, fake, monkeypatch, caplog):
    handler = FluxGateHandler(api_key="fg_live_x", base_url="http://127.0.0.1:9")

    def broken(*args, **kwargs):
        raise RuntimeError("sender is broken")

    monkeypatch.setattr("fluxgate_langchain.sinks.remote_event", broken)
    fake.enqueue(FakeReply())
    with caplog.at_level(logging.ERROR, logger="fluxgate"):
        assert chat_openai.invoke("hi", config={"callbacks": [handler]}).content
    assert any("sender is broken" in (r.exc_text or "") for r in caplog.records)
