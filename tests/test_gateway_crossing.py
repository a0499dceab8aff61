"""A route's fallback across protocols, end to end (issue 17): the stock ``openai`` and
``anthropic`` SDKs call the gateway (``tests/gateway_server.py``: uvicorn in front of the
bundled fake provider) on ``route:...`` models whose first model fails (503) and whose
next one speaks the other protocol.

What a user relies on: the caller's own SDK reads the answer (streamed too: its chunks,
its accumulator's final message, a usage chunk only when asked for), tools and tool calls
cross both ways, a request the other side can't express is refused by name before
anything is sent, an answer it can't express is a clear 502 (an error event mid-stream),
and every attempt is the team's event, the one that served priced from the upstream's
own usage.

The fake answers plain text; where a test needs a tool call, a server tool block or
arguments that are not JSON, it patches the fake's renderers
(``fake_provider._JSON_BUILDERS`` / ``_SSE_BUILDERS``), as tests/test_gateway_translate.py
does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from fluxgate_django.pricing import calculate_cost
from fluxgate_django.records import Usage
from fluxgate_django.testing import FakeReply
from fluxgate_django.testing import fake_provider as fake_module
from fluxgate_django.testing.fake_provider import anthropic as anthropic_wire
from fluxgate_django.testing.fake_provider import openai as openai_wire
from fluxgate_django.testing.fake_provider.turn import _Turn

from .helpers import fluxgate_overrides

pytest_plugins = ["tests.gateway_server"]
pytestmark = pytest.mark.django_db(transaction=True)

CLAUDE = "claude-sonnet-4-6"
MSGS = [{"role": "user", "content": "What's the weather in Paris?"}]
DOWN = FakeReply(status=503, error_message="the model is overloaded")
TEXT = "It is sunny in Paris today."
#: Anthropic's counts: input excludes the 200 cache reads.
CLAUDE_REPLY = FakeReply(text=TEXT, input_tokens=1000, cached_tokens=200, output_tokens=40)
#: OpenAI's counts: the 900 prompt tokens include the 100 cached.
GPT_REPLY = FakeReply(text=TEXT, input_tokens=900, cached_tokens=100, output_tokens=30)


def price(provider: str, model: str, **tokens: int) -> Decimal:
    cost = calculate_cost(provider, model, Usage(**tokens)).usd
    assert cost is not None and cost > 0
    return cost


def claude_cost() -> Decimal:
    """What CLAUDE_REPLY costs (FluxGate's usage counts the input with its cache reads)."""
    return price("anthropic", CLAUDE, input_tokens=1200, cache_read_tokens=200, output_tokens=40)


def gpt_cost(model: str = "gpt-4o-mini") -> Decimal:
    """What GPT_REPLY costs on ``model``."""
    return price("openai", model, input_tokens=900, cache_read_tokens=100, output_tokens=30)


def outline(events) -> list[tuple[str, str, str, int]]:
    return [(e.provider, e.model, e.status, e.fallback_attempt) for e in events]


# -- the fake's answers, patched ------------------------------------------------------------


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def _data(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


Block = tuple[dict[str, Any], list[dict[str, Any]]]


def claude_stream(turn: _Turn, blocks: list[Block], stop_reason: str) -> Iterator[bytes]:
    """An Anthropic stream as the API sends one: ``blocks`` (each a content block start
    and its deltas), the turn's usage (message_start, then message_delta's totals)."""
    message = {
        "id": "msg_crossing",
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": anthropic_wire._anthropic_usage(turn, 1),
    }
    yield _event("message_start", {"type": "message_start", "message": message})
    for index, (block, deltas) in enumerate(blocks):
        start = {"type": "content_block_start", "index": index, "content_block": block}
        yield _event("content_block_start", start)
        for delta in deltas:
            data = {"type": "content_block_delta", "index": index, "delta": delta}
            yield _event("content_block_delta", data)
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    end = {"stop_reason": stop_reason, "stop_sequence": None}
    usage = anthropic_wire._anthropic_usage(turn, turn.output_tokens)
    yield _event("message_delta", {"type": "message_delta", "delta": end, "usage": usage})
    yield _event("message_stop", {"type": "message_stop"})


def gpt_stream(turn: _Turn, deltas: list[dict[str, Any]], finish: str) -> Iterator[bytes]:
    """An OpenAI chat stream: the role chunk, ``deltas``, the finish chunk and (asked for:
    the gateway always asks) the usage chunk."""
    base = {"id": "chatcmpl-crossing", "object": "chat.completion.chunk", "created": 1}
    base["model"] = turn.model
    for delta in [{"role": "assistant", "content": ""}, *deltas]:
        yield _data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield _data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    assert turn.body["stream_options"] == {"include_usage": True}
    yield _data({**base, "choices": [], "usage": openai_wire._openai_usage(turn)})
    yield b"data: [DONE]\n\n"


def text_block(text: str) -> Block:
    return {"type": "text", "text": ""}, [{"type": "text_delta", "text": text}]


def tool_block(tool_id: str, name: str, fragments: list[str]) -> Block:
    start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return start, [{"type": "input_json_delta", "partial_json": f} for f in fragments]


# -- streams across protocols ---------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
def test_an_openai_stream_falls_back_to_claude_and_reads_as_openai_chunks(gateway, include_usage):
    fake = gateway.fake
    fake.enqueue(DOWN, CLAUDE_REPLY)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = gateway.openai().chat.completions.create(
        model="route:summarize", messages=MSGS, stream=True, **options
    )
    chunks = list(stream)  # (each parsed by the SDK as a ChatCompletionChunk)

    assert [(r.path, r.body["model"]) for r in fake.requests] == [
        ("/v1/chat/completions", "gpt-4o-mini"),
        ("/v1/messages", CLAUDE),
    ]
    assert fake.requests[1].body["stream"] is True
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"route:summarize"}  # (the name the caller asked for)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == TEXT
    assert [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason] == [
        "stop"
    ]
    if include_usage:
        *rest, last = chunks
        assert last.choices == [] and all(c.usage is None for c in rest)
        assert last.usage is not None
        usage = last.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (1200, 40)
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 200
    else:  # not asked for: no usage chunk shown
        assert len(with_choices) == len(chunks) and all(c.usage is None for c in chunks)

    failed, served = gateway.events()
    assert outline([failed, served]) == [
        ("openai", "gpt-4o-mini", "ERROR", 0),
        ("anthropic", CLAUDE, "SUCCESS", 1),
    ]
    assert (served.operation, served.streamed, served.source) == ("messages", True, "gateway")
    # Priced from Claude's own usage, whatever the caller asked to be shown.
    assert (served.input_tokens, served.cache_read_tokens, served.output_tokens) == (1200, 200, 40)
    assert served.cost_usd == claude_cost()
    assert served.metadata["gateway_model"] == "route:summarize"


def test_an_anthropic_stream_falls_back_to_an_openai_model(gateway):
    fake = gateway.fake
    fake.enqueue(DOWN, GPT_REPLY)
    with gateway.anthropic().messages.stream(
        model="route:claude-first", max_tokens=300, messages=MSGS
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()

    assert [(r.path, r.body["model"]) for r in fake.requests] == [
        ("/v1/messages", CLAUDE),
        ("/v1/chat/completions", "gpt-4o-mini"),
    ]
    assert fake.requests[1].body["max_completion_tokens"] == 300
    assert "".join(texts) == TEXT
    assert final.type == "message" and final.role == "assistant"
    assert final.model == "route:claude-first"
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", TEXT)]
    assert final.stop_reason == "end_turn"
    # OpenAI's 900 prompt tokens include the 100 cached; Anthropic's input excludes them.
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (800, 100)
    assert usage.output_tokens == 30

    failed, served = gateway.events()
    assert outline([failed, served]) == [
        ("anthropic", CLAUDE, "ERROR", 0),
        ("openai", "gpt-4o-mini", "SUCCESS", 1),
    ]
    assert (served.operation, served.streamed) == ("chat", True)
    assert served.cost_usd == gpt_cost()


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_a_route_falls_back_from_openai_to_claude_and_back(gateway, streamed):
    """An Anthropic caller: an OpenAI model fails (its request translated), Claude fails
    (the caller's own protocol), another OpenAI model serves (translated again)."""
    fake = gateway.fake
    routes = {"zigzag": {"strategy": "ordered", "models": ["fast", "claude-sonnet", "gpt-4o"]}}
    fake.enqueue(DOWN, DOWN, GPT_REPLY)
    client = gateway.anthropic()
    with fluxgate_overrides(ROUTES=routes):
        if streamed:
            with client.messages.stream(model="route:zigzag", max_tokens=300, messages=MSGS) as s:
                message = s.get_final_message()
        else:
            message = client.messages.create(model="route:zigzag", max_tokens=300, messages=MSGS)

    assert [(r.path, r.body["model"]) for r in fake.requests] == [
        ("/v1/chat/completions", "gpt-4o-mini"),
        ("/v1/messages", CLAUDE),
        ("/v1/chat/completions", "gpt-4o"),
    ]
    assert fake.requests[0].body["messages"] == MSGS  # (the same turn, in OpenAI's words)
    assert fake.requests[1].body["max_tokens"] == 300  # (as the caller sent it)
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", TEXT)]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (800, 30)
    events = gateway.events()
    assert outline(events) == [
        ("openai", "gpt-4o-mini", "ERROR", 0),
        ("anthropic", CLAUDE, "ERROR", 1),
        ("openai", "gpt-4o", "SUCCESS", 2),
    ]
    assert events[-1].streamed is streamed
    assert events[-1].cost_usd == gpt_cost("gpt-4o")


def test_when_every_model_fails_the_last_error_reads_in_the_callers_protocol(gateway):
    routes = {"zigzag": {"strategy": "ordered", "models": ["claude-sonnet", "fast"]}}
    gateway.fake.enqueue(DOWN, FakeReply(status=503, error_message="gpt is down too"))
    with fluxgate_overrides(ROUTES=routes), pytest.raises(anthropic.InternalServerError) as caught:
        gateway.anthropic().messages.create(model="route:zigzag", max_tokens=50, messages=MSGS)
    assert caught.value.status_code == 503
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "gpt is down too"},
    }
    assert [e.status for e in gateway.events()] == ["ERROR", "ERROR"]


# -- tools across protocols -----------------------------------------------------------------

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather.", "parameters": WEATHER},
    }
]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "The weather.", "input_schema": WEATHER}]
PARIS = {"city": "Paris"}
#: A conversation that has used the tool once: the call and its result.
OPENAI_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris, then Lyon?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_paris", "content": "sunny, 24C"},
]
ANTHROPIC_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris, then Lyon?"},
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_paris", "name": "get_weather", "input": PARIS},
        ],
    },
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_paris", "content": "sunny, 24C"}],
    },
]


def claude_calls_the_tool(monkeypatch) -> None:
    """Claude answers with a text and a call of get_weather for Lyon (JSON or stream)."""
    json_builder = fake_module._JSON_BUILDERS["messages"]

    def as_json(turn: _Turn) -> dict[str, Any]:
        message = json_builder(turn)
        message["content"] = [
            {"type": "text", "text": "Paris is sunny. Now Lyon."},
            {"type": "tool_use", "id": "toolu_lyon", "name": "get_weather",
             "input": {"city": "Lyon"}},
        ]  # fmt: skip
        message["stop_reason"] = "tool_use"
        return message

    def as_stream(turn: _Turn) -> Iterator[bytes]:
        blocks = [
            text_block("Paris is sunny. Now Lyon."),
            tool_block("toolu_lyon", "get_weather", ['{"city": ', '"Lyon"}']),
        ]
        return claude_stream(turn, blocks, "tool_use")

    monkeypatch.setitem(fake_module._JSON_BUILDERS, "messages", as_json)
    monkeypatch.setitem(fake_module._SSE_BUILDERS, "messages", as_stream)


def gpt_calls_the_tool(monkeypatch) -> None:
    """The OpenAI model answers with a call of get_weather for Lyon (JSON or stream)."""
    json_builder = fake_module._JSON_BUILDERS["chat"]

    def as_json(turn: _Turn) -> dict[str, Any]:
        completion = json_builder(turn)
        choice = completion["choices"][0]
        choice["message"]["content"] = "Paris is sunny. Now Lyon."
        choice["message"]["tool_calls"] = [
            {"id": "call_lyon", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}},
        ]  # fmt: skip
        choice["finish_reason"] = "tool_calls"
        return completion

    def as_stream(turn: _Turn) -> Iterator[bytes]:
        call = {"index": 0, "id": "call_lyon", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
        deltas = [
            {"content": "Paris is sunny. Now Lyon."},
            {"tool_calls": [call]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"Lyon"}'}}]},
        ]
        return gpt_stream(turn, deltas, "tool_calls")

    monkeypatch.setitem(fake_module._JSON_BUILDERS, "chat", as_json)
    monkeypatch.setitem(fake_module._SSE_BUILDERS, "chat", as_stream)


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_tools_cross_to_claude_and_come_back_as_openai_tool_calls(gateway, monkeypatch, streamed):
    claude_calls_the_tool(monkeypatch)
    gateway.fake.enqueue(DOWN, CLAUDE_REPLY)
    client = gateway.openai()
    arguments: dict[str, Any] = {
        "model": "route:summarize",
        "messages": OPENAI_CONVERSATION,
        "tools": OPENAI_TOOLS,
    }
    if streamed:
        with client.chat.completions.stream(
            **arguments, stream_options={"include_usage": True}
        ) as stream:
            completion = stream.get_final_completion()
    else:
        completion = client.chat.completions.create(**arguments)

    # Claude was sent the tool, the call and its result in its own terms...
    sent = gateway.fake.requests[1].body
    assert sent["tools"] == [
        {"name": "get_weather", "description": "The weather.", "input_schema": WEATHER}
    ]
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_paris", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_paris", "content": "sunny, 24C"}]},
    ]  # fmt: skip
    # ...and its tool call reads as an OpenAI tool call.
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Paris is sunny. Now Lyon."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_lyon", "function", "get_weather", {"city": "Lyon"})
    ]
    assert completion.usage is not None and completion.usage.prompt_tokens == 1200
    served = gateway.events()[-1]
    assert (served.provider, served.finish_reason, served.streamed) == (
        "anthropic",
        "tool_use",
        streamed,
    )
    assert served.cost_usd == claude_cost()


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_tools_cross_to_an_openai_model_and_come_back_as_tool_use_blocks(
    gateway, monkeypatch, streamed
):
    gpt_calls_the_tool(monkeypatch)
    gateway.fake.enqueue(DOWN, GPT_REPLY)
    client = gateway.anthropic()
    arguments: dict[str, Any] = {
        "model": "route:claude-first",
        "max_tokens": 300,
        "messages": ANTHROPIC_CONVERSATION,
        "tools": ANTHROPIC_TOOLS,
    }
    if streamed:
        with client.messages.stream(**arguments) as stream:
            message = stream.get_final_message()
    else:
        message = client.messages.create(**arguments)

    sent = gateway.fake.requests[1].body
    assert sent["tools"] == OPENAI_TOOLS
    assert sent["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_paris", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_paris", "content": "sunny, 24C"},
    ]  # fmt: skip
    assert message.stop_reason == "tool_use"
    first = message.content[0]
    assert first.type == "text" and first.text == "Paris is sunny. Now Lyon."
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("call_lyon", "get_weather", {"city": "Lyon"})
    ]
    served = gateway.events()[-1]
    assert (served.provider, served.finish_reason, served.streamed) == (
        "openai",
        "tool_calls",
        streamed,
    )
    assert served.cost_usd == gpt_cost()


# -- what the other protocol can't express --------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "feature"),
    [("openai", "n>1"), ("anthropic", "thinking")],
)
def test_a_request_the_other_protocol_cant_express_is_refused_by_name_and_nothing_is_sent(
    gateway, caller, feature
):
    routes = {"across": {"models": ["claude-sonnet" if caller == "openai" else "fast"]}}
    with fluxgate_overrides(ROUTES=routes):
        if caller == "openai":
            with pytest.raises(openai.BadRequestError) as caught:
                gateway.openai().chat.completions.create(model="route:across", messages=MSGS, n=2)
            error = caught.value.body
            assert isinstance(error, dict) and error["type"] == "invalid_request_error"
        else:
            with pytest.raises(anthropic.BadRequestError) as caught:
                gateway.anthropic().messages.create(
                    model="route:across",
                    max_tokens=2000,
                    messages=MSGS,
                    thinking={"type": "enabled", "budget_tokens": 1024},
                )
            body = caught.value.body
            assert isinstance(body, dict) and body["type"] == "error"
            error = body["error"]
            assert error["type"] == "invalid_request_error"
    assert caught.value.status_code == 400
    assert f"{feature} can't be translated" in error["message"]
    assert gateway.fake.request_count == 0 and gateway.events() == []


def test_a_fallback_that_cant_take_the_request_is_passed_over_without_a_request(gateway):
    """gpt-4o-mini fails; Claude can't take n=2: the caller gets gpt-4o-mini's error,
    and Claude was never sent a request it would have answered unfaithfully."""
    gateway.fake.enqueue(DOWN)
    with pytest.raises(openai.InternalServerError, match="overloaded") as caught:
        gateway.openai().chat.completions.create(model="route:summarize", messages=MSGS, n=2)
    assert caught.value.status_code == 503
    assert [r.path for r in gateway.fake.requests] == ["/v1/chat/completions"]
    assert outline(gateway.events()) == [("openai", "gpt-4o-mini", "ERROR", 0)]


def claude_uses_a_server_tool(monkeypatch) -> None:
    """Claude answers with a web search of its own (a ``server_tool_use`` block: no
    OpenAI chat equivalent) between two texts."""
    json_builder = fake_module._JSON_BUILDERS["messages"]
    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}

    def as_json(turn: _Turn) -> dict[str, Any]:
        message = json_builder(turn)
        message["content"] = [
            {"type": "text", "text": "Let me look that up."},
            {**search, "input": {"query": "weather Paris"}},
            {"type": "text", "text": TEXT},
        ]
        return message

    def as_stream(turn: _Turn) -> Iterator[bytes]:
        query = {"type": "input_json_delta", "partial_json": '{"query": "weather Paris"}'}
        blocks = [text_block("Let me look that up."), (search, [query]), text_block(TEXT)]
        return claude_stream(turn, blocks, "end_turn")

    monkeypatch.setitem(fake_module._JSON_BUILDERS, "messages", as_json)
    monkeypatch.setitem(fake_module._SSE_BUILDERS, "messages", as_stream)


def gpt_sends_unusable_tool_arguments(monkeypatch) -> None:
    """The OpenAI model calls a tool with arguments that are not JSON (it happens): no
    Anthropic ``tool_use`` can carry them."""
    json_builder = fake_module._JSON_BUILDERS["chat"]

    def as_json(turn: _Turn) -> dict[str, Any]:
        completion = json_builder(turn)
        choice = completion["choices"][0]
        choice["message"]["content"] = None
        choice["message"]["tool_calls"] = [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Par'}},
        ]  # fmt: skip
        choice["finish_reason"] = "tool_calls"
        return completion

    def as_stream(turn: _Turn) -> Iterator[bytes]:  # (an audio delta: no Anthropic block)
        deltas = [{"content": "Let me say it."}, {"audio": {"id": "audio_1", "data": "UklG"}}]
        return gpt_stream(turn, deltas, "stop")

    monkeypatch.setitem(fake_module._JSON_BUILDERS, "chat", as_json)
    monkeypatch.setitem(fake_module._SSE_BUILDERS, "chat", as_stream)


def test_an_answer_openai_cant_express_is_a_502_and_still_the_teams_priced_event(
    gateway, monkeypatch
):
    claude_uses_a_server_tool(monkeypatch)
    gateway.fake.enqueue(DOWN, CLAUDE_REPLY)
    client = gateway.openai(max_retries=2)  # (the SDK's default: it is told not to retry)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="route:summarize", messages=MSGS)
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["code"]) == ("server_error", "bad_gateway")
    assert error["message"] == (
        f"FluxGate: the answer of '{CLAUDE}' can't be given in the OpenAI protocol: "
        "'server_tool_use' content blocks in a response can't be translated."
    )
    assert gateway.fake.request_count == 2  # (no retry: the answer was served, and billed)

    failed, served = gateway.events()
    assert outline([failed, served]) == [
        ("openai", "gpt-4o-mini", "ERROR", 0),
        ("anthropic", CLAUDE, "SUCCESS", 1),
    ]
    assert caught.value.response.headers["x-fluxgate-tracking-id"] == str(served.tracking_id)
    assert served.cost_usd == claude_cost()  # what Claude billed for it
    assert served.metadata["gateway_error"] == error["message"]


def test_an_answer_anthropic_cant_express_is_a_502_in_anthropics_shape(gateway, monkeypatch):
    gpt_sends_unusable_tool_arguments(monkeypatch)
    gateway.fake.enqueue(DOWN, GPT_REPLY)
    with pytest.raises(anthropic.APIStatusError) as caught:
        gateway.anthropic(max_retries=2).messages.create(
            model="route:claude-first", max_tokens=300, messages=MSGS, tools=ANTHROPIC_TOOLS
        )
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    message = body["error"]["message"]
    assert "tool call arguments that are not a JSON object can't be translated" in message
    assert gateway.fake.request_count == 2
    served = gateway.events()[-1]
    assert (served.provider, served.status, served.cost_usd) == ("openai", "SUCCESS", gpt_cost())
    assert served.metadata["gateway_error"] == message


def test_a_streamed_event_openai_cant_express_ends_the_stream_with_an_error_and_is_priced(
    gateway, monkeypatch
):
    claude_uses_a_server_tool(monkeypatch)
    gateway.fake.enqueue(DOWN, CLAUDE_REPLY)
    stream = gateway.openai().chat.completions.create(
        model="route:summarize", messages=MSGS, stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(seen) == "Let me look that up."  # what came before it
    assert "'server_tool_use' content blocks can't be translated" in caught.value.message
    assert caught.value.body == {
        "message": caught.value.message,
        "type": "server_error",
        "param": None,
        "code": "bad_gateway",
    }

    served = gateway.events()[-1]
    # The upstream stream was read to its end: its usage is known, and priced.
    assert (served.provider, served.streamed, served.status) == ("anthropic", True, "SUCCESS")
    assert "stream_completed" not in served.metadata  # (a stream cut short says False)
    assert served.cost_usd == claude_cost()
    assert served.metadata["gateway_error"] == caught.value.message


def test_a_streamed_event_anthropic_cant_express_ends_the_stream_with_an_error_event(
    gateway, monkeypatch
):
    gpt_sends_unusable_tool_arguments(monkeypatch)
    gateway.fake.enqueue(DOWN, GPT_REPLY)
    seen: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        gateway.anthropic().messages.stream(
            model="route:claude-first", max_tokens=300, messages=MSGS
        ) as stream,
    ):
        for text in stream.text_stream:
            seen.append(text)
    assert "".join(seen) == "Let me say it."
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "api_error"
    assert "audio can't be translated" in body["error"]["message"]
    served = gateway.events()[-1]
    assert (served.provider, served.streamed, served.status) == ("openai", True, "SUCCESS")
    assert served.cost_usd == gpt_cost()
    assert served.metadata["gateway_error"] == body["error"]["message"]
