"""``POST api/otlp/v1/traces``: OpenTelemetry GenAI spans in, as priced events.

An OTLP/HTTP trace receiver: point any OpenTelemetry SDK's OTLP/HTTP span exporter at
``https://<site>/fluxgate/api/otlp/v1/traces`` with ``Authorization: Bearer <api key>``,
and each LLM call span — from any language's GenAI instrumentation (OpenTelemetry's own
``opentelemetry-instrumentation-openai-v2``..., OpenLLMetry/traceloop, logfire) — becomes
one event of the key's team, exactly as if it had been posted to ``events/``: validated
the same way, priced here (a cost a span carries is never used), charged to the team's
budgets, stored idempotently, with ``source="otlp"``.

Bodies: ``application/x-protobuf`` (needs ``opentelemetry-proto``: the ``otlp`` extra)
or ``application/json`` (OTLP's JSON encoding), optionally ``Content-Encoding: gzip``
(or ``deflate``).
Answers, as OTLP/HTTP says: 200 with an ``ExportTraceServiceResponse`` in the request's
encoding — with ``partial_success`` (``rejected_spans``, ``error_message``) when some LLM
spans could not be stored (each is named with what is wrong with it; the others are
stored); 400 with a ``google.rpc.Status`` for a body that is not an export; 413 for a
body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (compressed or not); 415 for another content
type or encoding; 401/403/429 as the rest of the API (an API key is required).

Which spans: those whose ``gen_ai.operation.name`` is an LLM call — ``chat``,
``text_completion``, ``embeddings``, ``generate_content`` (OpenLLMetry's older
``llm.request.type`` ``chat``/``completion``/``embedding`` too). All others (HTTP,
database, ``execute_tool``, ``invoke_agent``... spans) are ignored, not rejected.

How a span becomes an event (from its attributes; provider, models and attribution fall
back to its resource's, so that a service can set ``fluxgate.feature`` once):

* ``tracking_id``: a UUID derived from the team, trace id and span id, so a re-sent
  export (exporters retry) is a duplicate, not a second event.
* ``provider``: ``gen_ai.provider.name``, else the older ``gen_ai.system``, lower-cased
  and named as FluxGate and its prices name them (:data:`PROVIDERS`: ``gcp.gemini`` →
  ``gemini``, ``aws.bedrock`` → ``aws``, ``azure.ai.openai`` → ``azure``...); ``openai``
  with a ``server.address`` of a known OpenAI-compatible gateway is that gateway
  (``openrouter``); none given: inferred from the model name (``gpt-*``, ``claude-*``...).
* ``operation``: ``chat``, ``completions``, ``embeddings``, ``generate_content``.
* ``requested_model`` / ``model``: ``gen_ai.request.model`` / ``gen_ai.response.model``
  (the requested one when no response model).
* tokens: ``gen_ai.usage.input_tokens`` (else ``gen_ai.usage.prompt_tokens``,
  ``llm.usage.prompt_tokens``), ``gen_ai.usage.output_tokens`` (``…completion_tokens``),
  ``gen_ai.usage.cache_read.input_tokens`` (``gen_ai.usage.cache_read_input_tokens``),
  ``gen_ai.usage.cache_creation.input_tokens`` (``…cache_write.input_tokens``,
  ``…cache_creation_input_tokens``), ``gen_ai.usage.reasoning.output_tokens``
  (``…reasoning_tokens``). As the GenAI conventions say, the input count is the total
  input, cache reads and writes included (OpenLLMetry and OpenAI's counts are); one
  smaller than its cache reads plus writes can only be the uncached input alone (as
  Anthropic's API reports it), and the cache tokens are added to it. Likewise an output
  count smaller than its reasoning tokens gets them added. A span without any token
  count is stored unpriced (``cost_source="usage-missing"``), or, if it failed, as not
  billed (``"not-billed"``), as for tracked calls.
* ``finish_reason``: the first of ``gen_ai.response.finish_reasons``; the status follows
  from it as for tracked calls (``length`` → ``MAX_TOKENS``...). A span with status
  ``ERROR`` or an ``error.type`` is a failed call: ``ERROR`` (``MALFORMED_REQUEST`` for
  an ``error.type`` of ``400``/``BadRequestError``), ``error_type`` / ``error_message``
  from ``error.type`` and the status message.
* ``created_at``: the span's end; ``latency_ms``: its duration.
* ``service_tier``: ``openai.response.service_tier`` (``gen_ai.openai.response.…``).
* attribution — the team is always the API key's (a ``fluxgate.team`` naming another
  team refuses the span): ``feature`` = ``fluxgate.feature``; ``step`` =
  ``fluxgate.step``; ``end_user_id`` = ``user.id`` (``enduser.id``,
  ``fluxgate.user_id``); ``end_user_email`` = ``user.email``; ``session_id`` =
  ``session.id`` (``fluxgate.session_id``); ``conversation_id`` =
  ``gen_ai.conversation.id`` (``fluxgate.conversation_id``); ``tags`` =
  ``fluxgate.tags``; ``request_id`` = the trace id (the admin's trace page then shows a
  trace's LLM calls together); ``metadata`` = ``otel.trace_id``, ``otel.span_id``,
  ``otel.scope.name`` and the resource's ``service.name``.

No prompt or completion content is read from spans, whatever they carry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from rest_framework import status as http_status
from rest_framework.exceptions import ParseError, UnsupportedMediaType, ValidationError
from rest_framework.parsers import BaseParser
from rest_framework.request import Request

from ..model_refs import infer_provider
from ..outcomes import finish_status, openai_compatible_provider
from ..records import Source, Status
from .base import FluxGateAPIView, RequestTooLarge, fluxgate_schema
from .ingest import (
    MAX_BATCH_SIZE,
    MAX_ERROR_MESSAGE_LENGTH,
    EventIngestSerializer,
    IngestEvents,
    accept_chunked_body,
    ingest,
    validate_event,
)
from .otlp_decode import (
    INVALID_ARGUMENT,
    STATUS_ERROR,
    BodyTooLarge,
    OTLPDecodeError,
    Span,
    UnsupportedEncoding,
    decode_json,
    decode_protobuf,
    decompress,
    export_response,
    status_body,
)
from .permissions import IsApiKey, api_key_of
from .throttling import IngestRateThrottle

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
#: ``gen_ai.operation.name`` of LLM calls → FluxGate's operation.
OPERATIONS = {
    "chat": "chat",
    "text_completion": "completions",
    "embeddings": "embeddings",
    "generate_content": "generate_content",
}
#: OpenLLMetry's ``llm.request.type`` (spans from before it set ``gen_ai.operation.name``).
REQUEST_TYPES = {"chat": "chat", "completion": "completions", "embedding": "embeddings"}
#: ``gen_ai.provider.name`` / ``gen_ai.system`` values (lower-cased) → FluxGate's names,
#: which are genai-prices' provider ids beyond openai, anthropic and gemini. Other values
#: are kept, lower-cased (priced if a ``ModelPrice`` names them; else cost unknown).
PROVIDERS = {
    "gcp.gemini": "gemini",
    "gcp.gen_ai": "gemini",
    "gcp.vertex_ai": "gemini",
    "vertex_ai": "gemini",
    "vertexai": "gemini",
    "google": "gemini",
    "aws.bedrock": "aws",
    "bedrock": "aws",
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.inference": "azure",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
}
#: Providers serving several vendors' models (Claude on Vertex AI): the model decides.
_MODEL_DECIDES = frozenset({"gcp.vertex_ai", "vertex_ai", "vertexai"})
_MALFORMED_ERRORS = frozenset({"400", "BadRequestError"})
#: Namespace of the tracking ids of spans (uuid5 of "<team id>:<trace id>:<span id>").
SPAN_NAMESPACE = uuid.UUID("6f1d4b52-2c39-4f0e-9a4e-0b7f6c1d2e31")
#: Most rejected spans described in ``partial_success.error_message``.
MAX_DESCRIBED = 10
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens")
OUTPUT = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.usage.completion_tokens",
)
CACHE_READ = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "llm.usage.cache_read_input_tokens",
)
CACHE_WRITE = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "llm.usage.cache_creation_input_tokens",
)
REASONING = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
)
SERVICE_TIER = ("openai.response.service_tier", "gen_ai.openai.response.service_tier")
#: Event text fields → the attributes they are read from (span, then resource).
ATTRIBUTION = {
    "feature": ("fluxgate.feature",),
    "step": ("fluxgate.step",),
    "end_user_id": ("user.id", "enduser.id", "fluxgate.user_id"),
    "end_user_email": ("user.email",),
    "session_id": ("session.id", "fluxgate.session_id"),
    "conversation_id": ("gen_ai.conversation.id", "fluxgate.conversation_id"),
}


# -- parsing ---------------------------------------------------------------------------


@dataclasses.dataclass
class Export:
    spans: list[Span]
    protobuf: bool


class _OTLPParser(BaseParser):
    protobuf = False

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Export:
        request = (parser_context or {}).get("request")
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "") if request is not None else ""
        return read_export(stream.read(_limit_plus_one()), encoding, protobuf=self.protobuf)


class OTLPProtobufParser(_OTLPParser):
    media_type = PROTOBUF
    protobuf = True


class OTLPJSONParser(_OTLPParser):
    media_type = JSON


def _limit_plus_one() -> int:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return -1 if limit is None else limit + 1


def read_export(body: bytes, encoding: str, *, protobuf: bool) -> Export:
    """The spans of one request body (raises DRF's 400, 413 or 415 errors)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    too_large = (
        f"Body larger than {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE): "
        "export fewer spans per request."
    )
    if limit is not None and len(body) > limit:
        raise RequestTooLarge(too_large)
    try:
        body = decompress(body, encoding, limit)
        if not protobuf:
            return Export(decode_json(body), protobuf=False)
        try:
            import opentelemetry.proto  # noqa: F401
        except ImportError:
            raise UnsupportedMediaType(
                PROTOBUF,
                "Protobuf OTLP needs opentelemetry-proto on the server "
                "(pip install 'django-fluxgate[otlp]'); or export OTLP JSON.",
            ) from None
        return Export(decode_protobuf(body), protobuf=True)
    except BodyTooLarge as exc:
        raise RequestTooLarge(str(exc)) from exc
    except UnsupportedEncoding as exc:
        raise UnsupportedMediaType(encoding, str(exc)) from exc
    except OTLPDecodeError as exc:
        raise ParseError(str(exc)) from exc


# -- spans → events ----------------------------------------------------------------------


class SpanRefused(ValueError):
    """An LLM span that can't be an event (named in ``partial_success``)."""


def llm_operation(span: Span) -> str | None:
    """FluxGate's operation of an LLM call span; None for any other span."""
    name = span.attributes.get("gen_ai.operation.name")
    if isinstance(name, str):
        return OPERATIONS.get(name.strip().lower())
    kind = span.attributes.get("llm.request.type")
    if isinstance(kind, str):
        return REQUEST_TYPES.get(kind.strip().lower())
    return None


def span_tracking_id(team_id: Any, span: Span) -> uuid.UUID:
    return uuid.uuid5(SPAN_NAMESPACE, f"{team_id}:{span.trace_id}:{span.span_id}")


def span_event(span: Span, operation: str, team_id: Any) -> dict[str, Any]:
    """The ingest payload (``EventIngestSerializer``'s input) of one LLM span."""
    if span.problems:
        raise SpanRefused(" ".join(span.problems))
    if not span.end_ns:
        raise SpanRefused("endTimeUnixNano is missing.")
    if span.start_ns and span.end_ns < span.start_ns:
        raise SpanRefused("The span ends before it starts.")
    try:
        created_at = _EPOCH + dt.timedelta(microseconds=span.end_ns // 1000)
    except OverflowError:
        raise SpanRefused("endTimeUnixNano is out of range.") from None
    requested = _text(span, "gen_ai.request.model")
    model = _text(span, "gen_ai.response.model") or requested
    provider = _provider(span, model)
    if not provider:
        raise SpanRefused(
            "No gen_ai.provider.name (or gen_ai.system), and the model names no known provider."
        )
    tokens = {name: _tokens(span, names) for name, names in _TOKENS.items()}
    reported = tokens["input_tokens"] is not None or tokens["output_tokens"] is not None
    counts = {name: value or 0 for name, value in tokens.items()}
    cached = counts["cache_read_tokens"] + counts["cache_write_tokens"]
    if counts["input_tokens"] < cached:  # the uncached input only (Anthropic's count)
        counts["input_tokens"] += cached
    if counts["output_tokens"] < counts["reasoning_tokens"]:
        counts["output_tokens"] += counts["reasoning_tokens"]
    reasons = span.attributes.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, str):
        reasons = [reasons]
    reason = reasons[0] if isinstance(reasons, list) and reasons else ""
    reason = reason if isinstance(reason, str) else ""
    error_type = _error_type(span.attributes.get("error.type"))
    if span.status_code == STATUS_ERROR or error_type:
        malformed = error_type.rsplit(".", 1)[-1] in _MALFORMED_ERRORS
        status = Status.MALFORMED_REQUEST if malformed else Status.ERROR
        message = span.status_message[:MAX_ERROR_MESSAGE_LENGTH]
    else:
        status = finish_status(provider, reason)
        if status is Status.SUCCESS and provider == "gemini":
            status = finish_status(provider, reason.upper())
        message = ""
    metadata = {"otel.trace_id": span.trace_id, "otel.span_id": span.span_id}
    if span.scope:
        metadata["otel.scope.name"] = span.scope
    service = span.resource.get("service.name")
    if isinstance(service, str) and service:
        metadata["service.name"] = service
    payload: dict[str, Any] = {
        "tracking_id": str(span_tracking_id(team_id, span)),
        "created_at": created_at.isoformat(),
        "provider": provider,
        "model": model,
        "requested_model": requested,
        "operation": operation,
        "status": status.value,
        "finish_reason": reason,
        "error_type": error_type,
        "error_message": message,
        # (a failed call without usage: not billed, as for tracked clients)
        "usage_reported": reported or status in (Status.ERROR, Status.MALFORMED_REQUEST),
        "latency_ms": (span.end_ns - span.start_ns) / 1e6 if span.start_ns else None,
        "service_tier": _text(span, *SERVICE_TIER),
        "request_id": span.trace_id,
        "metadata": metadata,
        **counts,
    }
    for field, names in ATTRIBUTION.items():
        payload[field] = _text(span, *names)
    team = span.attribute("fluxgate.team")
    if team is not None:
        payload["team"] = team
    tags = span.attribute("fluxgate.tags")
    if tags is not None:
        payload["tags"] = [tags] if isinstance(tags, str) else tags
    return payload


_TOKENS = {
    "input_tokens": INPUT,
    "output_tokens": OUTPUT,
    "cache_read_tokens": CACHE_READ,
    "cache_write_tokens": CACHE_WRITE,
    "reasoning_tokens": REASONING,
}


def _error_type(value: Any) -> str:
    """``error.type`` as text; ``"<class 'openai.BadRequestError'>"`` (what some
    instrumentations set) as ``openai.BadRequestError``."""
    if value is None:
        return ""
    text = str(value).strip()
    if text.startswith("<class '") and text.endswith("'>"):
        text = text[8:-2]
    return text


def _tokens(span: Span, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = span.attributes.get(name)
        if value is None:
            continue
        integral = isinstance(value, float) and value.is_integer()
        if integral or (isinstance(value, str) and value.strip().isdigit()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SpanRefused(f"Attribute {name!r} must be a whole number, not {value!r}.")
        return value
    return None


def _text(span: Span, *names: str) -> str:
    value = span.attribute(*names)
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # (a numeric user id)
    if not isinstance(value, str):
        name = next(n for n in names if span.attribute(n) is not None)
        raise SpanRefused(f"Attribute {name!r} must be a string, not {value!r}.")
    return value


def _provider(span: Span, model: str) -> str | None:
    raw = span.attribute("gen_ai.provider.name", "gen_ai.system")
    if not isinstance(raw, str) or not raw.strip():
        return infer_provider(model) if model else None
    name = raw.strip().lower()
    if name in _MODEL_DECIDES and model:
        return infer_provider(model) or PROVIDERS[name]
    provider = PROVIDERS.get(name, name)
    if provider == "openai":
        address = span.attributes.get("server.address")
        if isinstance(address, str) and address:
            provider = openai_compatible_provider(f"https://{address}/", "openai")
    return provider


@dataclasses.dataclass
class Received:
    """What became of the LLM spans of one export."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[str] = dataclasses.field(default_factory=list)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        shown = "; ".join(self.rejected[:MAX_DESCRIBED])
        more = len(self.rejected) - MAX_DESCRIBED
        tail = f"; and {more} more" if more > 0 else ""
        return f"{len(self.rejected)} LLM span(s) rejected: {shown}{tail}"


def receive_spans(spans: list[Span], team: Any) -> Received:
    """Store the LLM spans of ``spans`` as events of ``team`` (the others are ignored)."""
    received = Received()
    context = {"team": team}
    valid: list[tuple[Span, dict[str, Any]]] = []
    for span in spans:
        operation = llm_operation(span)
        if operation is None:
            continue
        try:
            payload = span_event(span, operation, team.pk)
        except SpanRefused as exc:
            received.rejected.append(_describe(span, str(exc)))
            continue
        event = validate_event(payload, context)
        if event is None:
            serializer = EventIngestSerializer(data=payload, context=context)
            if not serializer.is_valid():
                received.rejected.append(_describe(span, _errors_text(serializer.errors)))
                continue
            event = dict(serializer.validated_data)
        event["source"] = Source.OTLP.value
        valid.append((span, event))
    for start in range(0, len(valid), MAX_BATCH_SIZE):
        _store(valid[start : start + MAX_BATCH_SIZE], team, received)
    return received


def _store(items: list[tuple[Span, dict[str, Any]]], team: Any, received: Received) -> None:
    """``ingest`` the events of ``items``; those it refuses (a price no column holds) are
    rejected and the others ingested again (it stores all of a batch or nothing)."""
    while items:
        events = IngestEvents(event for _, event in items)
        events.batch = True
        try:
            result = ingest(events, team)
        except ValidationError as exc:
            detail = exc.detail.get("events") if isinstance(exc.detail, dict) else None
            if not isinstance(detail, dict) or not detail:
                raise
            for index, errors in detail.items():
                received.rejected.append(_describe(items[int(index)][0], _errors_text(errors)))
            items = [item for i, item in enumerate(items) if str(i) not in detail]
            continue
        received.stored += result["accepted"]
        received.duplicates += result["duplicates"]
        return


def _describe(span: Span, problem: str) -> str:
    return f"span {span.span_id or '?'} ({span.name[:100]!r}): {problem}"


def _errors_text(errors: Any) -> str:
    if isinstance(errors, dict):
        return " ".join(f"{field}: {_errors_text(value)}" for field, value in errors.items())
    if isinstance(errors, list):
        return " ".join(_errors_text(value) for value in errors)
    return str(errors)


# -- the view ----------------------------------------------------------------------------


def _is_protobuf(request: Any) -> bool:
    return request.content_type.split(";")[0].strip().lower() in (PROTOBUF, "application/protobuf")


class OTLPTracesView(FluxGateAPIView):
    """OTLP/HTTP trace receiver (see the module's docstring)."""

    permission_classes = [IsApiKey]
    throttle_classes = [IngestRateThrottle]
    parser_classes = [OTLPProtobufParser, OTLPJSONParser]

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        if request.method == "POST":
            accept_chunked_body(request)  # (DRF reads no body without Content-Length)
        return super().initialize_request(request, *args, **kwargs)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # (the answer's encoding is the request's, whatever Accept says)
        return super().perform_content_negotiation(request, force=True)

    @fluxgate_schema(exclude=True)  # (OTLP's protocol, not FluxGate's REST API)
    def post(self, request: Request) -> HttpResponse:
        key = api_key_of(request)
        assert key is not None  # IsApiKey
        export = request.data
        if not isinstance(export, Export):  # an empty body (DRF parses none)
            protobuf = _is_protobuf(request)
            if not protobuf and not request.content_type.lower().startswith(JSON):
                raise UnsupportedMediaType(request.content_type or "(none)")
            export = read_export(b"", "", protobuf=protobuf)
        received = receive_spans(export.spans, key.team)
        body = export_response(
            len(received.rejected), received.error_message, protobuf=export.protobuf
        )
        return HttpResponse(body, content_type=PROTOBUF if export.protobuf else JSON)

    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, ParseError):  # OTLP/HTTP: a google.rpc.Status, as the request
            protobuf = _is_protobuf(self.request)
            return HttpResponse(
                status_body(INVALID_ARGUMENT, str(exc.detail), protobuf=protobuf),
                status=http_status.HTTP_400_BAD_REQUEST,
                content_type=PROTOBUF if protobuf else JSON,
            )
        return super().handle_exception(exc)
