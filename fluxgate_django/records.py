"""Framework-free records that flow through the one pipeline.

``Usage`` + ``CallInfo`` (what a provider adapter reads off a response) are priced into an
``EventRecord`` (one row of ``Event``), which a recorder persists. ``TrackingResult`` is
what the caller sees on ``response.fluxgate``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import operator
import uuid
from collections.abc import Sequence
from decimal import Decimal
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Outcome of one LLM call attempt."""

    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    BLOCKED = "BLOCKED"
    MAX_TOKENS = "MAX_TOKENS"
    CONTENT_FILTER = "CONTENT_FILTER"
    RECITATION = "RECITATION"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"

    def __str__(self) -> str:
        return self.value


#: The statuses of a call that failed (an error rate counts these).
FAILED_STATUSES = frozenset({Status.ERROR.value, Status.MALFORMED_REQUEST.value})


class Source(str, Enum):
    SDK = "sdk"
    LANGCHAIN = "langchain"
    SERVICE = "service"
    API = "api"
    #: The OpenAI- and Anthropic-compatible gateway (``fluxgate/v1/``, ``fluxgate/anthropic/``).
    GATEWAY = "gateway"
    #: Spans taken in over OTLP/HTTP (``fluxgate/api/otlp/v1/traces``).
    OTLP = "otlp"

    def __str__(self) -> str:
        return self.value


class CostSource(str, Enum):
    """Where an event's ``cost_usd`` came from, or why it has none.

    A priced event's ``cost_source`` may carry the service tier it was priced at after a
    ``+`` (``"genai-prices+batch"``); :meth:`of` reads the kind back.
    """

    #: Priced from the genai-prices data.
    GENAI_PRICES = "genai-prices"
    #: Priced from a ``ModelPrice`` row (negotiated or self-hosted prices).
    OVERRIDE = "override"
    #: Priced from FluxGate's corrections to genai-prices' data (``price_supplement``).
    SUPPLEMENT = "supplement"
    #: The provider reported the call's cost itself (OpenRouter's ``usage.cost``).
    PROVIDER_REPORTED = "provider-reported"
    #: The context's ``openrouter_cost``.
    OPENROUTER = "openrouter"
    #: An ingested event whose client gave the cost.
    CLIENT = "client"
    #: Served from the LLM service's response cache: cost 0, the saving recorded.
    RESPONSE_CACHE = "response-cache"
    #: Refused before it was sent (a budget): cost 0.
    NOT_SENT = "not-sent"
    #: A failed call the provider did not bill: no cost, but not unpriced.
    NOT_BILLED = "not-billed"
    #: No price is known for the model: cost None, never a silent 0.
    UNKNOWN = "unknown"
    #: The provider reported no usage (an OpenAI stream without ``include_usage``).
    USAGE_MISSING = "usage-missing"
    #: Usage was reported in part (a LangChain stream with output but no input count).
    USAGE_INCOMPLETE = "usage-incomplete"
    #: A stream closed before the provider's final usage.
    STREAM_INCOMPLETE = "stream-incomplete"
    #: A raw streaming response (``with_streaming_response``) whose body FluxGate can't read.
    STREAMING_RESPONSE = "streaming-response"
    #: A cost or token count no column or budget counter can hold (negative, not finite,
    #: over ``MAX_EVENT_COST_USD``...): refused, the event stored without a cost (the
    #: refused values are in its ``metadata["fluxgate_refused"]``).
    INVALID = "invalid"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, cost_source: str) -> CostSource | None:
        """The kind of an event's ``cost_source`` (None for an empty or foreign value)."""
        try:
            return cls(cost_source.split("+", 1)[0])
        except ValueError:
            return None


#: Unpriced kinds whose budget reservation is charged its estimate (usage not reported:
#: a stream read without usage must not slip past budgets).
CHARGE_ESTIMATE = frozenset(
    {
        CostSource.USAGE_MISSING,
        CostSource.USAGE_INCOMPLETE,
        CostSource.STREAM_INCOMPLETE,
        CostSource.STREAMING_RESPONSE,
        CostSource.INVALID,
    }
)


@dataclasses.dataclass(slots=True)
class Usage:
    """Token counts in one convention for every provider.

    ``input_tokens`` is the *total* input, cache reads and writes included;
    ``output_tokens`` is the total output, reasoning included. The subsets
    (``cache_read_tokens``, ``cache_write_tokens`` and, of those writes,
    ``cache_write_1h_tokens``; ``reasoning_tokens``) say how they are priced.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclasses.dataclass(slots=True)
class CallInfo:
    """What a provider adapter reads off one call besides usage."""

    provider: str
    operation: str
    requested_model: str = ""
    model: str = ""
    finish_reason: str = ""
    status: Status = Status.SUCCESS
    streamed: bool = False
    #: Tier the provider served the call on (``flex``, ``batch``...), for pricing.
    service_tier: str = ""
    #: False when the provider reported no usage (e.g. a stream without include_usage).
    usage_reported: bool = True
    #: The event's ``cost_source`` when usage was not reported.
    usage_missing_reason: str = CostSource.USAGE_MISSING.value
    #: A cost the provider itself reported (OpenRouter's ``usage.cost``), used as is.
    reported_cost: Decimal | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TrackingResult:
    """Set on every tracked response and stream as ``.fluxgate``."""

    status: Status
    cost: Decimal | None
    tracking_id: uuid.UUID
    created_at: dt.datetime
    error_message: str | None = None
    cost_source: str = ""
    #: Token counts as recorded (None for a call refused before it was sent).
    usage: Usage | None = None
    #: The model that served the call (the requested one when the provider named none).
    model: str = ""
    #: The provider's finish reason, as it sent it (``stop``, ``end_turn``, ``STOP``...).
    finish_reason: str = ""


@dataclasses.dataclass(slots=True)
class EventRecord:
    """One LLM call attempt, ready to be stored as an ``Event`` row.

    Field names match ``fluxgate_django.models.Event`` except ``team`` (a slug, id or
    ``Team`` instance, resolved by the recorder in its batch) and ``user_pk``.
    """

    tracking_id: uuid.UUID
    created_at: dt.datetime
    provider: str
    model: str
    operation: str
    status: str
    source: str = Source.SDK.value
    requested_model: str = ""
    team: Any = None
    user_pk: Any = None
    end_user_id: str = ""
    end_user_email: str = ""
    session_id: str = ""
    conversation_id: str = ""
    request_id: str = ""
    feature: str = ""
    step: str = ""
    finish_reason: str = ""
    error_type: str = ""
    error_message: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cost_usd: Decimal | None = None
    cost_source: str = ""
    cost_saved_usd: Decimal | None = None
    latency_ms: float | None = None
    time_to_first_token_ms: float | None = None
    stream_duration_ms: float | None = None
    streamed: bool = False
    cache_hit: bool = False
    fallback_attempt: int = 0
    service_tier: str = ""
    run_id: str = ""
    parent_run_id: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    tags: list[str] = dataclasses.field(default_factory=list)
    content: Any = None
    #: A budget reservation to settle with this event's cost (see ``guard.Reservation``).
    budget_reservation: dict[str, Any] | None = None

    @property
    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            cache_write_1h_tokens=self.cache_write_1h_tokens,
        )

    def tracking_result(self) -> TrackingResult:
        return TrackingResult(
            status=Status(self.status),
            cost=self.cost_usd,
            tracking_id=self.tracking_id,
            created_at=self.created_at,
            error_message=self.error_message or None,
            cost_source=self.cost_source,
            usage=None if self.status == Status.BUDGET_EXCEEDED.value else self.usage,
            model=self.model,
            finish_reason=self.finish_reason,
        )

    def to_json(self, *, compact: bool = False) -> dict[str, Any]:
        """A JSON-safe dict (for the spool and for task payloads). ``compact`` leaves out
        the fields at their default value, which :meth:`from_json` puts back: a typical
        event is a third of the size, and a third of the work to decode."""
        out: dict[str, Any] = {}
        for f, default in _FIELD_DEFAULTS:
            value = getattr(self, f)
            if compact and value.__class__ is default.__class__ and value == default:
                continue
            if isinstance(value, Decimal):
                value = format(value, "f")  # (plain notation, as the ingest API takes it)
            elif isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, dt.datetime):
                value = value.isoformat()
            elif f == "team" and value is not None and not isinstance(value, (str, int)):
                value = value.pk
            out[f] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventRecord:
        values = {k: v for k, v in data.items() if k in _FIELD_SET}
        values["tracking_id"] = uuid.UUID(values["tracking_id"])
        values["created_at"] = dt.datetime.fromisoformat(values["created_at"])
        for key in ("cost_usd", "cost_saved_usd"):
            if values.get(key) is not None:
                values[key] = Decimal(values[key])
        return cls(**values)


EVENT_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(EventRecord))
_FIELD_SET = frozenset(EVENT_RECORD_FIELDS)


class _Required:
    """The "default" of a field without one: equal to nothing, so always sent."""


#: (field, default) of every EventRecord field, for ``to_json(compact=True)``.
_FIELD_DEFAULTS: tuple[tuple[str, Any], ...] = tuple(
    (
        f.name,
        f.default_factory()
        if f.default_factory is not dataclasses.MISSING
        else _Required()
        if f.default is dataclasses.MISSING
        else f.default,
    )
    for f in dataclasses.fields(EventRecord)
)


# -- batches as one JSON text (Celery task payloads) ------------------------------------------

_all_fields = operator.attrgetter(*EVENT_RECORD_FIELDS)
_AT = {name: i for i, name in enumerate(EVENT_RECORD_FIELDS)}
_TRACKING_ID, _CREATED_AT, _TEAM = _AT["tracking_id"], _AT["created_at"], _AT["team"]
_MONEY = (_AT["cost_usd"], _AT["cost_saved_usd"])


def record_row(record: EventRecord) -> list[Any]:
    """``record``'s field values in ``EVENT_RECORD_FIELDS`` order, as JSON values (ids,
    dates and money as text, a team object as its pk): a row of :func:`pack_records`
    and of the journal."""
    row = list(_all_fields(record))
    row[_TRACKING_ID] = str(row[_TRACKING_ID])
    row[_CREATED_AT] = row[_CREATED_AT].isoformat()
    for i in _MONEY:
        if row[i] is not None:
            row[i] = str(row[i])
    team = row[_TEAM]
    if team is not None and not isinstance(team, (str, int)):
        row[_TEAM] = team.pk
    return row


def pack_records(records: Sequence[EventRecord]) -> str:
    """A batch as one JSON text: the field names once, then one list of values per record.

    What the Celery recorder sends as its task's argument. Against a list of
    ``to_json()`` dicts it is a quarter of the work to encode and to decode (no key per
    value, and a string is passed through by the broker's serializer, where each dict
    would go through its per-object hooks, in the worker's main process and again in
    the pool process).
    """
    rows = [record_row(record) for record in records]
    return json.dumps({"fields": EVENT_RECORD_FIELDS, "rows": rows}, separators=(",", ":"))


def unpack_records(text: str) -> list[EventRecord]:
    """The records of a :func:`pack_records` text (one packed by a version of FluxGate
    with other fields too: by name, as :meth:`EventRecord.from_json` reads them)."""
    data = json.loads(text)
    fields, rows = data["fields"], data["rows"]
    if tuple(fields) != EVENT_RECORD_FIELDS:
        return [EventRecord.from_json(dict(zip(fields, row, strict=True))) for row in rows]
    records = []
    for row in rows:
        row[_TRACKING_ID] = uuid.UUID(row[_TRACKING_ID])
        row[_CREATED_AT] = dt.datetime.fromisoformat(row[_CREATED_AT])
        for i in _MONEY:
            if row[i] is not None:
                row[i] = Decimal(row[i])
        records.append(EventRecord(*row))
    return records
