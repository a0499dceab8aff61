"""OpenTelemetry in: GenAI spans exported over OTLP/HTTP to ``fluxgate/api/otlp/v1/traces``
become events of the API key's team, priced by the site from the published price.

The first tests are what a site sees from a real OpenTelemetry setup: the official
``opentelemetry-instrumentation-openai-v2`` instrumenting a real ``openai`` client talking
to the fake provider, the OTel SDK's span processor and its OTLP/HTTP protobuf exporter
posting to a live server. The others post OTLP JSON as another language's SDK (a Node
service) would, and bodies that are not exports.
"""

from __future__ import annotations

import gzip
import json
import uuid
from decimal import Decimal
from typing import Any

import openai
import pytest
import requests
from django.test import Client
from google.rpc import status_pb2  # (googleapis-common-protos: the exporter's)
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from fluxgate_django.models import Event, ModelPrice
from fluxgate_django.testing import FakeReply
from tests.api_helpers import key_client, make_world, user_client

PATH = "/fluxgate/api/otlp/v1/traces"
MTOK = Decimal(1_000_000)
#: Published prices, USD per million tokens.
GPT_4O = {"input": Decimal("2.50"), "output": Decimal("10")}
#: Claude Sonnet 4: base input, 5-minute cache writes, cache hits, output.
SONNET_4 = {
    "input": Decimal("3"),
    "cache_write": Decimal("3.75"),
    "cache_read": Decimal("0.30"),
    "output": Decimal("15"),
}
PROMPT = "a prompt that must never be stored"


def gpt_4o_cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * GPT_4O["input"] + output_tokens * GPT_4O["output"]) / MTOK


# -- a real OpenTelemetry pipeline ---------------------------------------------------------


@pytest.fixture
def instrumented(live_server, openai_client, monkeypatch):
    """``(tracer_provider, memory, exporter_for)``: the OpenAI instrumentation on its own
    tracer provider (the global one can be set once per process), its spans exported in
    batches to the live server with team a's key and kept in ``memory`` too."""
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    world = make_world()

    def exporter_for(secret: str, **options: Any) -> OTLPSpanExporter:
        return OTLPSpanExporter(
            endpoint=live_server.url + PATH,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=20,
            **options,
        )

    resource = Resource.create({"service.name": "support-bot", "fluxgate.feature": "support"})
    provider = TracerProvider(resource=resource)
    memory = InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter_for(world.secret_a)))
    provider.add_span_processor(BatchSpanProcessor(memory))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield world, provider, memory, exporter_for
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_instrumented_openai_calls_become_one_priced_event_each(
    instrumented, fake, openai_client, live_server
):
    world, provider, memory, exporter_for = instrumented
    tracer = provider.get_tracer("support-bot")
    fake.enqueue(FakeReply(input_tokens=1200, output_tokens=300))
    fake.enqueue(FakeReply(input_tokens=4000, output_tokens=50, finish_reason="length"))
    fake.enqueue(FakeReply(status=500))
    with tracer.start_as_current_span("POST /support/answer", attributes={"http.method": "POST"}):
        messages = [{"role": "user", "content": PROMPT}]
        openai_client.chat.completions.create(model="gpt-4o", messages=messages)
        openai_client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=50)
        with pytest.raises(openai.InternalServerError):
            openai_client.chat.completions.create(model="gpt-4o", messages=messages)
        with tracer.start_as_current_span("SELECT answers", attributes={"db.system": "sqlite"}):
            pass
    assert provider.force_flush(timeout_millis=20_000)

    spans = memory.get_finished_spans()
    chat_spans = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert len(spans) == 5 and len(chat_spans) == 3
    assert Event.objects.count() == 3  # the HTTP and database spans are not LLM calls
    events = {e.metadata["otel.span_id"]: e for e in Event.objects.all()}
    assert set(events) == {format(s.context.span_id, "016x") for s in chat_spans}
    first, capped, failed = (events[format(s.context.span_id, "016x")] for s in chat_spans)

    trace_id = format(chat_spans[0].context.trace_id, "032x")
    for event in (first, capped, failed):
        assert (event.team, event.source, event.provider, event.operation) == (
            world.team_a,
            "otlp",
            "openai",
            "chat",
        )
        assert (event.feature, event.requested_model, event.request_id) == (
            "support",
            "gpt-4o",
            trace_id,
        )
        assert event.metadata["service.name"] == "support-bot"
        assert event.latency_ms is not None and event.latency_ms > 0
        assert event.content is None and PROMPT not in json.dumps(event.metadata)

    assert (first.model, first.status, first.finish_reason) == ("gpt-4o", "SUCCESS", "stop")
    assert (first.input_tokens, first.output_tokens) == (1200, 300)
    assert first.cost_usd == gpt_4o_cost(1200, 300)
    assert (capped.status, capped.finish_reason) == ("MAX_TOKENS", "length")
    assert (capped.input_tokens, capped.output_tokens) == (4000, 50)
    assert capped.cost_usd == gpt_4o_cost(4000, 50)
    assert failed.status == "ERROR" and "InternalServerError" in failed.error_type
    assert "500" in failed.error_message
    assert (failed.cost_usd, failed.cost_source) == (None, "not-billed")
    assert not Event.objects.filter(team=world.team_b).exists()

    # The exporter sends the same batch again (a retry), gzip-compressed this time:
    # duplicates, not new events.
    again = exporter_for(world.secret_a, compression=Compression.Gzip)
    assert again.export(spans) is SpanExportResult.SUCCESS
    again.shutdown()
    assert Event.objects.count() == 3

    # Answered as OTLP/HTTP says: an ExportTraceServiceResponse, protobuf, nothing rejected.
    body = encode_spans(spans).SerializeToString()
    headers = {
        "Authorization": f"Bearer {world.secret_a}",
        "Content-Type": "application/x-protobuf",
    }
    response = requests.post(live_server.url + PATH, data=body, headers=headers, timeout=20)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert not answer.HasField("partial_success")
    assert Event.objects.count() == 3

    # The same spans from another team's key are that team's events (a span can't pick
    # a team, nor stand in the way of another team's).
    other = exporter_for(world.secret_b)
    assert other.export(chat_spans[:1]) is SpanExportResult.SUCCESS
    other.shutdown()
    assert Event.objects.filter(team=world.team_b).count() == 1
    assert Event.objects.filter(team=world.team_a).count() == 3


# -- OTLP JSON, as a Node service sends it ---------------------------------------------------


def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # int64: a string in JSON
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, list):
        return {
            "key": key,
            "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}},
        }
    return {"key": key, "value": {"stringValue": value}}


def span(name: str, attributes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": uuid.uuid4().hex[:16],
        "parentSpanId": "eee19b7ec3c1b173",
        "name": name,
        "kind": 3,
        "startTimeUnixNano": "1767268800000000000",  # 2026-01-01T12:00:00Z
        "endTimeUnixNano": "1767268801250000000",
        "attributes": [attr(k, v) for k, v in attributes.items()],
        "status": {},
        **fields,
    }


def export(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    resource = {"service.name": "checkout-node", **(resource or {})}
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [attr(k, v) for k, v in resource.items()]},
                "scopeSpans": [
                    {"scope": {"name": "@opentelemetry/instrumentation-anthropic"}, "spans": spans}
                ],
            }
        ]
    }


def claude_span(**attributes: Any) -> dict[str, Any]:
    return span(
        "chat claude-sonnet-4-20250514",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-20250514",
            "gen_ai.response.model": "claude-sonnet-4-20250514",
            "gen_ai.response.finish_reasons": ["end_turn"],
            "gen_ai.usage.input_tokens": 5120,  # all input: 120 + cache reads and writes
            "gen_ai.usage.cache_read.input_tokens": 4000,
            "gen_ai.usage.cache_creation.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 100,
            **attributes,
        },
    )


#: 120 uncached input, 4000 cache reads, 1000 cache writes, 100 output tokens.
CLAUDE_COST = (
    120 * SONNET_4["input"]
    + 4000 * SONNET_4["cache_read"]
    + 1000 * SONNET_4["cache_write"]
    + 100 * SONNET_4["output"]
) / MTOK


def post(client: Client, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers.setdefault("content_type", "application/json")
    return client.post(PATH, data, **headers)


@pytest.mark.django_db
def test_a_claude_span_in_otlp_json_is_priced_with_its_cache_tokens():
    w = make_world()
    client = key_client(w.secret_a)
    attribution = {
        "user.id": "cust-42",
        "session.id": "sess-9",
        "gen_ai.conversation.id": "conv-7",
        "fluxgate.step": "draft-reply",
        "fluxgate.tags": ["beta", "eu"],
    }
    body = export(
        claude_span(**attribution),
        # Anthropic's own count (the uncached input only) is read as such.
        claude_span(**{"gen_ai.usage.input_tokens": 120}),
        span("execute_tool lookup_order", {"gen_ai.operation.name": "execute_tool"}),
        span("invoke_agent support", {"gen_ai.operation.name": "invoke_agent"}),
        span("GET /orders/42", {"http.request.method": "GET", "http.response.status_code": 200}),
        resource={"fluxgate.feature": "checkout-assistant"},
    )
    response = post(client, body)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {}

    events = list(Event.objects.order_by("id"))
    assert len(events) == 2
    for event in events:
        assert (event.team, event.source, event.provider, event.model) == (
            w.team_a,
            "otlp",
            "anthropic",
            "claude-sonnet-4-20250514",
        )
        assert (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens) == (
            5120,
            4000,
            1000,
        )
        assert event.output_tokens == 100 and event.finish_reason == "end_turn"
        assert event.cost_usd == CLAUDE_COST
        assert event.feature == "checkout-assistant"
        assert event.request_id == "5b8efff798038103d269b633813fc60c"
        assert event.created_at.isoformat() == "2026-01-01T12:00:01.250000+00:00"
        assert event.latency_ms == 1250
    assert (events[0].end_user_id, events[0].session_id, events[0].conversation_id) == (
        "cust-42",
        "sess-9",
        "conv-7",
    )
    assert (events[0].step, events[0].tags) == ("draft-reply", ["beta", "eu"])
    assert (events[1].end_user_id, events[1].session_id, events[1].step) == ("", "", "")

    # Sent again (an exporter's retry): stored once.
    assert post(client, body).status_code == 200
    assert Event.objects.count() == 2


@pytest.mark.django_db
def test_older_conventions_and_failed_calls():
    """OpenLLMetry's attributes (``gen_ai.system``, ``llm.request.type``, prompt /
    completion tokens) and a span with status ERROR."""
    w = make_world()
    body = export(
        span(
            "openai.chat",
            {
                "gen_ai.system": "OpenAI",
                "llm.request.type": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.prompt_tokens": 2000,
                "gen_ai.usage.completion_tokens": 100,
                "fluxgate.feature": "summaries",
                # A cost the client computed (logfire's, OpenLLMetry's) is not used.
                "operation.cost": 99.0,
                "gen_ai.usage.total_cost": 99.0,
            },
        ),
        span(
            "chat gpt-4o",
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "error.type": "openai.RateLimitError",
            },
            status={"code": "STATUS_CODE_ERROR", "message": "Rate limit reached"},
        ),
    )
    assert post(key_client(w.secret_a), body).json() == {}
    summary, limited = Event.objects.order_by("id")
    assert (summary.provider, summary.operation, summary.feature) == ("openai", "chat", "summaries")
    assert summary.cost_usd == gpt_4o_cost(2000, 100)
    assert summary.cost_source.startswith("genai-prices")
    assert (limited.status, limited.error_type) == ("ERROR", "openai.RateLimitError")
    assert limited.error_message == "Rate limit reached" and limited.cost_usd is None
    # Nothing of the export request itself (its URL's name, the key) is attribution.
    assert (limited.feature, limited.end_user_id, limited.session_id) == ("", "", "")


# -- gzip --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_gzip_bodies_are_read_and_bounded(settings):
    w = make_world()
    client = key_client(w.secret_a)
    body = gzip.compress(json.dumps(export(claude_span())).encode())
    response = post(client, body, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200 and response.json() == {}
    assert Event.objects.get().cost_usd == CLAUDE_COST

    # A body over the size limit is refused; so is a small one that inflates past it
    # (not inflated in memory).
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    large = json.dumps(export(*[claude_span() for _ in range(200)])).encode()
    assert len(large) > 100_000
    response = post(client, large)
    assert (
        response.status_code == 413 and "DATA_UPLOAD_MAX_MEMORY_SIZE" in response.json()["detail"]
    )
    bomb = gzip.compress(b" " * 10_000_000)
    assert len(bomb) < 100_000
    response = post(client, bomb, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413 and "decompressed" in response.json()["detail"]

    response = post(client, b"not gzip at all", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400 and "gzip" in response.json()["message"]
    response = post(client, body, HTTP_CONTENT_ENCODING="br")
    assert response.status_code == 415 and "br" in response.json()["detail"]
    assert Event.objects.count() == 1


# -- bad requests ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_bodies_that_are_not_exports_are_refused():
    w = make_world()
    client = key_client(w.secret_a)

    response = post(client, b"\x0a\xff\xff\xff", content_type="application/x-protobuf")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(response.content)
    assert status.code == 3 and "ExportTraceServiceRequest" in status.message

    for bad, message in [
        (b"{not json", "not JSON"),
        (b"[]", "expected an object"),
        (b'{"resourceSpans": {}}', "resourceSpans: expected a list"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}', "expected an object"),
    ]:
        response = post(client, bad)
        assert response.status_code == 400, bad
        assert response.json()["code"] == 3 and message in response.json()["message"], bad

    # An empty body: an empty protobuf export is one, an empty JSON body is not.
    response = client.generic("POST", PATH, b"", CONTENT_TYPE="application/x-protobuf")
    assert response.status_code == 200 and response.content == b""
    response = client.generic("POST", PATH, b"", CONTENT_TYPE="application/json")
    assert response.status_code == 400 and "not JSON" in response.json()["message"]

    for content_type in ("text/plain", "application/xml"):
        response = post(client, b'{"resourceSpans": []}', content_type=content_type)
        assert response.status_code == 415, content_type
    response = key_client(w.secret_a).generic("POST", PATH, b"{}", content_type="")
    assert response.status_code == 415
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_only_a_team_api_key_may_export():
    w = make_world()
    body = export(claude_span())
    assert post(Client(), body).status_code == 401
    assert post(key_client("fg_live_not-a-real-key"), body).status_code == 401
    w.key_b.revoke()
    assert post(key_client(w.secret_b), body).status_code == 401
    response = post(user_client(w.member_a), body)
    assert response.status_code == 403 and "API key" in response.json()["detail"]
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_invalid_llm_spans_are_rejected_and_the_others_stored():
    w = make_world()
    good = claude_span()
    body = export(
        good,
        claude_span(**{"gen_ai.usage.output_tokens": -5}),
        claude_span(**{"gen_ai.usage.output_tokens": "many"}),
        claude_span(**{"fluxgate.team": "b"}),
        claude_span(**{"fluxgate.feature": "x" * 500}),
        {**claude_span(), "spanId": "not-hex"},
        {**claude_span(), "endTimeUnixNano": str(4_000_000_000 * 10**9)},  # the future
        span("chat", {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10}),
        # Broken, but not an LLM call: ignored, not rejected.
        {**span("GET /", {"http.request.method": "GET"}), "spanId": "zz"},
    )
    response = post(key_client(w.secret_a), body)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "7"
    message = partial["errorMessage"]
    for expected in (
        "output_tokens: Ensure this value is greater than or equal to 0",
        "'gen_ai.usage.output_tokens' must be a whole number",
        "team: This API key records events for team 'a' only",
        "feature: Ensure this field has no more than 100 characters",
        "spanId must be 16 hex digits",
        "created_at: Must not be in the future",
        "No gen_ai.provider.name",
    ):
        assert expected in message, (expected, message)
    stored = Event.objects.get()
    assert stored.metadata["otel.span_id"] == good["spanId"] and stored.team == w.team_a


@pytest.mark.django_db
def test_a_span_priced_over_what_an_event_holds_is_rejected_alone():
    """Priced here from the site's prices (a ``ModelPrice``), beyond ``MAX_EVENT_COST_USD``:
    that span is rejected; the others of the export are stored."""
    w = make_world()
    ModelPrice.objects.create(
        provider="openai",
        model="pricey",
        input_per_mtok=Decimal("99999999"),
        output_per_mtok=Decimal("0"),
    )
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "pricey",
        "gen_ai.usage.input_tokens": 2_000_000_000,
        "gen_ai.usage.output_tokens": 0,
    }
    body = export(span("chat pricey", attributes), claude_span())
    response = post(key_client(w.secret_a), body)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "MAX_EVENT_COST_USD" in partial["errorMessage"]
    assert "openai/pricey" in partial["errorMessage"]
    assert Event.objects.get().cost_usd == CLAUDE_COST


@pytest.mark.django_db
def test_partial_success_in_protobuf():
    """A protobuf export with an invalid LLM span: answered in protobuf."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    w = make_world()
    request = ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    for span_id, input_tokens in ((b"\x01" * 8, 1000), (b"\x02" * 8, -1)):
        pb = scope_spans.spans.add(
            trace_id=b"\x0a" * 16,
            span_id=span_id,
            name="chat gpt-4o",
            start_time_unix_nano=1767268800000000000,
            end_time_unix_nano=1767268800500000000,
        )
        for key, value in [
            ("gen_ai.operation.name", AnyValue(string_value="chat")),
            ("gen_ai.provider.name", AnyValue(string_value="openai")),
            ("gen_ai.request.model", AnyValue(string_value="gpt-4o")),
            ("gen_ai.usage.input_tokens", AnyValue(int_value=input_tokens)),
            ("gen_ai.usage.output_tokens", AnyValue(int_value=10)),
        ]:
            pb.attributes.append(KeyValue(key=key, value=value))
    response = post(
        key_client(w.secret_a),
        request.SerializeToString(),
        content_type="application/x-protobuf",
    )
    assert response.status_code == 200
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 1
    assert "0202020202020202" in answer.partial_success.error_message
    event = Event.objects.get()
    assert event.cost_usd == gpt_4o_cost(1000, 10) and event.latency_ms == 500
