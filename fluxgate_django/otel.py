"""OpenTelemetry out: every LLM call this process makes is also a span.

When ``opentelemetry-api`` is installed and the site has configured a tracer provider
(``trace.set_tracer_provider(...)``, or ``opentelemetry-instrument``), each event a call
here produces — tracked SDK clients, the LangChain handler, the LLM service, the gateway,
budget refusals — is also a span, made when the event is submitted, on the caller's
thread, so it is a child of the span current there (the Django request span of
``opentelemetry-instrumentation-django``, a Celery task's span...). Attributes follow the
OpenTelemetry GenAI semantic conventions:

=========================================== ==============================================
``gen_ai.operation.name``                   ``chat`` (chat completions, Responses,
                                            Messages), ``text_completion``, ``embeddings``,
                                            ``generate_content``
``gen_ai.provider.name``                    ``openai``, ``anthropic``, ``gcp.gemini``, or
                                            the provider's name as configured
``gen_ai.request.model`` / ``.response.model`` the model asked for / the one that answered
``gen_ai.usage.input_tokens``               all input tokens, cached ones included
``gen_ai.usage.output_tokens``              all output tokens, reasoning included
``gen_ai.usage.cache_read.input_tokens``    input tokens read from the provider's cache
``gen_ai.usage.cache_creation.input_tokens`` input tokens written to it
``gen_ai.usage.reasoning.output_tokens``    reasoning tokens
``gen_ai.response.finish_reasons``          the finish reason, as a one-item list
``gen_ai.conversation.id``                  the call's ``conversation_id``
``error.type``                              the exception's class, or the status
                                            (``BUDGET_EXCEEDED``...) of a call that failed
``fluxgate.cost_usd``                       the exact cost, as a string (a ``Decimal``);
                                            absent when unknown (``fluxgate.cost_source``
                                            says why)
``fluxgate.*``                              ``tracking_id``, ``status``, ``team``,
                                            ``feature``, ``step``, ``cache_hit``,
                                            ``fallback_attempt``, ``source``
=========================================== ==============================================

No prompt or completion content is put on spans, whatever ``STORE_CONTENT`` says, and no
end-user identifier. Events ingested over the API or OTLP are not spans here (they were
spans, if anywhere, where they were made). ``FLUXGATE["OPENTELEMETRY"] = False`` turns
spans off; without the package, or with no tracer provider configured, this costs one
attribute check per call.
"""

from __future__ import annotations

import time
from typing import Any

from .conf import fluxgate_settings
from .records import FAILED_STATUSES, EventRecord, Source, Status

try:  # optional: ``pip install opentelemetry-api`` (and an SDK to export spans)
    from opentelemetry import trace
except ImportError:  # pragma: no cover - exercised where the package is absent
    trace = None  # type: ignore[assignment]

#: FluxGate's operations by their GenAI semantic-convention names.
OPERATIONS = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "completion": "text_completion",
    "embeddings": "embeddings",
    "embed_content": "embeddings",
    "generate_content": "generate_content",
}
#: Provider names the conventions spell otherwise.
PROVIDERS = {"gemini": "gcp.gemini", "google": "gcp.gemini", "vertexai": "gcp.vertex_ai"}
#: Sources whose events are calls made in this process (others were made elsewhere).
_LIVE_SOURCES = frozenset(
    {Source.SDK.value, Source.LANGCHAIN.value, Source.SERVICE.value, Source.GATEWAY.value}
)


class _Tracer:
    """The tracer of the configured provider, looked up again only when it changes."""

    __slots__ = ("provider", "tracer")

    def __init__(self) -> None:
        self.provider: Any = None
        self.tracer: Any = None

    def get(self) -> Any:
        if trace is None:
            return None
        provider = trace.get_tracer_provider()
        if provider is not self.provider:
            self.provider = provider
            self.tracer = (
                None
                if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
                else provider.get_tracer("fluxgate_django")
            )
        return self.tracer


_tracer = _Tracer()


def emit(record: EventRecord) -> None:
    """Make ``record``'s span, ended now, started ``latency_ms`` before, if spans are on."""
    tracer = _tracer.get()
    if tracer is None or record.source not in _LIVE_SOURCES:
        return
    if not fluxgate_settings.OPENTELEMETRY:
        return
    end = time.time_ns()
    start = end - int((record.latency_ms or 0.0) * 1_000_000)
    attributes = span_attributes(record)
    name = f"{attributes['gen_ai.operation.name']} {attributes['gen_ai.request.model']}"
    span = tracer.start_span(
        name.strip(), kind=trace.SpanKind.CLIENT, start_time=start, attributes=attributes
    )
    if record.status in FAILED_STATUSES or record.status == Status.BUDGET_EXCEEDED.value:
        span.set_status(trace.Status(trace.StatusCode.ERROR, record.status))
    span.end(end_time=end)


def span_attributes(record: EventRecord) -> dict[str, Any]:
    """The span attributes of ``record`` (see the module's table)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": OPERATIONS.get(record.operation, record.operation),
        "gen_ai.provider.name": PROVIDERS.get(record.provider, record.provider),
        "gen_ai.request.model": record.requested_model or record.model,
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "fluxgate.tracking_id": str(record.tracking_id),
        "fluxgate.status": record.status,
        "fluxgate.source": record.source,
        "fluxgate.cost_source": record.cost_source,
        "fluxgate.cache_hit": record.cache_hit,
        "fluxgate.fallback_attempt": record.fallback_attempt,
    }
    optional = {
        "gen_ai.response.model": record.model,
        "gen_ai.usage.cache_read.input_tokens": record.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": record.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
        "gen_ai.conversation.id": record.conversation_id,
        "fluxgate.team": _team_label(record.team),
        "fluxgate.feature": record.feature,
        "fluxgate.step": record.step,
    }
    attributes.update((key, value) for key, value in optional.items() if value)
    if record.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (record.finish_reason,)
    if record.cost_usd is not None:
        attributes["fluxgate.cost_usd"] = str(record.cost_usd)
    if record.status in FAILED_STATUSES or record.status == Status.BUDGET_EXCEEDED.value:
        attributes["error.type"] = record.error_type or record.status
    return attributes


def _team_label(team: Any) -> str:
    """A record's team (a ``Team``, a slug or an id) as a label: its slug where known."""
    if team is None:
        return ""
    return str(getattr(team, "slug", team))
