"""OpenTelemetry out: each call is a GenAI span, a child of the span current at the call.

Real ``openai`` / ``anthropic`` SDK clients against the loopback fake, an OpenTelemetry
SDK tracer provider with an in-memory exporter (what a site configures with an OTLP
exporter instead), and the stored events the spans must agree with.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from decimal import Decimal

import openai
import pytest
from django.conf import settings
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fluxgate_django import (
    BudgetExceeded,
    flush,
    otel,
    track_anthropic,
    track_openai,
    tracking_context,
)
from fluxgate_django.models import Budget, Event, Team
from fluxgate_django.testing import FakeReply

pytestmark = pytest.mark.django_db

MSGS = [{"role": "user", "content": "Name one prime number."}]


@pytest.fixture
def spans(monkeypatch):
    """A real SDK tracer provider as the site's global one, its finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(otel.trace, "get_tracer_provider", lambda: provider)
    yield provider, exporter
    provider.shutdown()


def llm_spans(exporter):
    """FluxGate's spans (an SDK may make its own: the ``anthropic`` SDK does)."""
    return [s for s in exporter.get_finished_spans() if "fluxgate.tracking_id" in s.attributes]


def test_a_tracked_call_is_a_child_span_that_agrees_with_its_event(openai_client, fake, spans):
    provider, exporter = spans
    client = track_openai(openai_client)
    fake.enqueue(FakeReply(input_tokens=1000, cached_tokens=200, output_tokens=500))
    request_tracer = provider.get_tracer("the-site")
    with (
        request_tracer.start_as_current_span("GET /summaries/") as request_span,
        tracking_context(team="search", feature="summarize", step="draft"),
    ):
        response = client.chat.completions.create(model="gpt-4o", messages=MSGS)
    flush()
    event = Event.objects.get(tracking_id=response.fluxgate.tracking_id)

    [span] = llm_spans(exporter)
    assert span.parent is not None
    assert span.parent.span_id == request_span.get_span_context().span_id
    assert span.context.trace_id == request_span.get_span_context().trace_id
    assert span.kind is trace.SpanKind.CLIENT
    assert span.name == "chat gpt-4o"
    attributes = dict(span.attributes)
    assert attributes.pop("gen_ai.response.finish_reasons") == ("stop",)
    assert Decimal(attributes.pop("fluxgate.cost_usd")) == event.cost_usd
    assert event.cost_usd == 800 * Decimal("2.5e-6") + 200 * Decimal("1.25e-6") + 500 * Decimal(
        "10e-6"
    )
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": event.model,
        "gen_ai.usage.input_tokens": event.input_tokens,
        "gen_ai.usage.output_tokens": event.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": 200,
        "fluxgate.tracking_id": str(event.tracking_id),
        "fluxgate.status": "SUCCESS",
        "fluxgate.source": "sdk",
        "fluxgate.cost_source": event.cost_source,
        "fluxgate.cache_hit": False,
        "fluxgate.fallback_attempt": 0,
        "fluxgate.team": "search",
        "fluxgate.feature": "summarize",
        "fluxgate.step": "draft",
    }
    assert (event.input_tokens, event.output_tokens) == (1000, 500)
    # The span covers the call: it ended after it started, by about the event's latency.
    duration_ms = (span.end_time - span.start_time) / 1e6
    assert duration_ms == pytest.approx(event.latency_ms, abs=0.01)
    assert span.status.is_ok


def test_anthropic_cache_tokens_and_streams(anthropic_client, fake, spans):
    _, exporter = spans
    client = track_anthropic(anthropic_client)
    fake.enqueue(
        FakeReply(input_tokens=100, cache_write_tokens=300, cached_tokens=50, output_tokens=20)
    )
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=MSGS) as s:
        for _ in s.text_stream:
            pass
    flush()
    [span] = llm_spans(exporter)
    event = Event.objects.get()
    assert span.attributes["gen_ai.provider.name"] == "anthropic"
    assert span.attributes["gen_ai.usage.input_tokens"] == event.input_tokens == 450
    assert span.attributes["gen_ai.usage.cache_creation.input_tokens"] == 300
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == 50
    assert Decimal(span.attributes["fluxgate.cost_usd"]) == event.cost_usd


@pytest.mark.django_db(transaction=True)
def test_async_calls_nest_under_the_task_span(async_openai_client, fake, spans):
    provider, exporter = spans
    client = track_openai(async_openai_client)
    tracer = provider.get_tracer("the-site")

    async def two_calls():
        with tracer.start_as_current_span("celery.task") as parent:
            await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS) for _ in "ab")
            )
        return parent

    parent = asyncio.run(two_calls())
    flush()
    found = llm_spans(exporter)
    assert len(found) == 2 == Event.objects.count()
    assert {s.parent.span_id for s in found} == {parent.get_span_context().span_id}
    assert {s.attributes["fluxgate.tracking_id"] for s in found} == {
        str(t) for t in Event.objects.values_list("tracking_id", flat=True)
    }


def test_a_refused_call_is_an_error_span(openai_client, fake, spans):
    _, exporter = spans
    team = Team.objects.create(name="Search", slug="search")
    Budget.objects.create(team=team, period="day", limit_usd=Decimal("0.000001"))
    client = track_openai(openai_client)
    with tracking_context(team="search"), pytest.raises(BudgetExceeded):
        client.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=500)
    assert fake.request_count == 0
    [span] = llm_spans(exporter)
    event = Event.objects.get()
    assert span.attributes["error.type"] == event.error_type == "BudgetExceeded"
    assert span.attributes["fluxgate.status"] == "BUDGET_EXCEEDED"
    assert span.status.status_code is trace.StatusCode.ERROR


def test_a_failed_call_names_its_error_type(openai_client, fake, spans):
    _, exporter = spans
    client = track_openai(openai_client)
    fake.enqueue(FakeReply(status=500, error_message="upstream broke"))
    with pytest.raises(openai.InternalServerError):
        client.with_options(max_retries=0).chat.completions.create(model="gpt-4o", messages=MSGS)
    flush()
    [span] = llm_spans(exporter)
    event = Event.objects.get()
    assert span.attributes["error.type"] == event.error_type == "InternalServerError"
    assert span.status.status_code is trace.StatusCode.ERROR


def test_spans_off_by_setting_and_without_a_provider(openai_client, fake, spans, monkeypatch):
    _, exporter = spans
    client = track_openai(openai_client)
    with override_settings(FLUXGATE={**settings.FLUXGATE, "OPENTELEMETRY": False}):
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert llm_spans(exporter) == []
    # No tracer provider configured: the API's proxy provider means "off".
    monkeypatch.setattr(otel.trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    client.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert llm_spans(exporter) == []
    flush()
    assert Event.objects.count() == 2


def test_without_the_package_tracking_still_works(tmp_path):
    """A site without opentelemetry-api: the module imports, and a call records its event."""
    script = tmp_path / "no_otel.py"
    script.write_text(
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if not installed\n"
        "from fluxgate_django import otel\n"
        "assert otel.trace is None and otel._tracer.get() is None\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr
