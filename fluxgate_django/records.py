"""Framework-free records that flow through the one pipeline.

``Usage`` + ``CallInfo`` (what a provider adapter reads off a response) are priced into an
``EventRecord`` (one row of ``Event``), which a recorder persists. ``TrackingResult`` is
what the caller sees on ``response.fluxgate``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
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


class Source(str, Enum):
    SDK = "sdk"
    LANGCHAIN = "langchain"
    SERVICE = "service"
    API = "api"

    def __str__(self) -> str:
        return self.value


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
    usage_missing_reason: str = "usage-missing"
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
    #: A budget reservation to settle with this event's cost (see budgets.BudgetGuard).
    budget_reservation: dict[str, Any] | None = None

    def tracking_result(self) -> TrackingResult:
        return TrackingResult(
            status=Status(self.status),
            cost=self.cost_usd,
            tracking_id=self.tracking_id,
            created_at=self.created_at,
            error_message=self.error_message or None,
            cost_source=self.cost_source,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (for the spool and for task payloads)."""
        out: dict[str, Any] = {}
        for f in EVENT_RECORD_FIELDS:
            value = getattr(self, f)
            if isinstance(value, (uuid.UUID, Decimal)):
                value = str(value)
            elif isinstance(value, dt.datetime):
                value = value.isoformat()
            elif f == "team" and value is not None and not isinstance(value, (str, int)):
                value = value.pk
            out[f] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventRecord:
        data = dict(data)
        data["tracking_id"] = uuid.UUID(data["tracking_id"])
        data["created_at"] = dt.datetime.fromisoformat(data["created_at"])
        for key in ("cost_usd", "cost_saved_usd"):
            if data.get(key) is not None:
                data[key] = Decimal(data[key])
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})


EVENT_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(EventRecord))
_FIELD_SET = frozenset(EVENT_RECORD_FIELDS)
