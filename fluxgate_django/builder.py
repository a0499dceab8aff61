"""The one record builder: every path that observes an LLM call makes its event here.

:func:`make_record` is Django-free (the LangChain remote sink uses it in a process with
no Django site) and takes every field an event can have; :func:`make_records` is the same
builder for a batch of one team's calls (the ingest API's), the work they share done
once. It decides the cost fields only
where no price is needed — a refused call costs 0, a call with no usage has no cost and
says why, a cost given by the provider or the caller is kept — and leaves ``cost_source``
empty otherwise, for :func:`fluxgate_django.pipeline.price_record` to fill. Nothing
patches a record after it is made.

Every value it stores is storable, so one poison value never fails the batch it is
written in: text is cut to its column's length and has no NUL character or lone surrogate
(neither PostgreSQL nor UTF-8 takes them); ``metadata``, ``tags`` and ``content`` are made
plain JSON here (:func:`json_safe`: a UUID, date, ``Decimal``, enum or an SDK's
``NotGiven``/``Omit`` sentinel is encoded or dropped, strings and keys lose NUL
characters, non-finite floats become strings); a cost or token count no column or budget
counter can hold is refused — logged, kept in ``metadata["fluxgate_refused"]``, and the
event stored with no cost (``cost_source="invalid"``), never a silent 0. A secret-shaped
string in an error message is masked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import operator
import re
import uuid
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings

from .context import EMPTY_CONTEXT, TrackingContext, resolved
from .money import MAX_EVENT_COST_USD
from .records import (
    EVENT_RECORD_FIELDS,
    CallInfo,
    CostSource,
    EventRecord,
    Source,
    Status,
    Usage,
)

logger = logging.getLogger("fluxgate.recording")


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAttempt:
    """Set by the LLM service around one provider attempt, for the event it produces."""

    source: Source
    fallback_attempt: int


#: The LLM service's current attempt (None outside the service).
service_attempt: ContextVar[ServiceAttempt | None] = ContextVar(
    "fluxgate_service_attempt", default=None
)

#: The length of every bounded text column of ``Event`` (a test checks them against the
#: model): a longer value is cut, so one long feature name never fails a whole batch.
TEXT_LIMITS = {
    "end_user_id": 255,
    "end_user_email": 254,
    "session_id": 255,
    "conversation_id": 255,
    "request_id": 255,
    "feature": 100,
    "step": 200,
    "provider": 50,
    "model": 200,
    "requested_model": 200,
    "operation": 50,
    "finish_reason": 50,
    "error_type": 200,
    "cost_source": 50,
    "service_tier": 50,
    "run_id": 64,
    "parent_run_id": 64,
}
MAX_ERROR_MESSAGE = 2000
#: The largest token count a column holds (``PositiveIntegerField``: 32-bit on every database).
MAX_TOKENS = 2_147_483_647
#: Deepest nesting kept in ``metadata``/``content``; deeper values are stored as text.
MAX_JSON_DEPTH = 32
#: Longest text an unknown object in ``metadata``/``content`` becomes.
MAX_OBJECT_TEXT = 1000
#: Where refused values are kept on the event (as text), with the reason in the log.
REFUSED_KEY = "fluxgate_refused"
_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)


def user_fields(user: Any) -> tuple[Any, str, str]:
    """``(django_user_pk, end_user_id, email)`` from a context ``user`` value."""
    if user.__class__ is dict:  # (the common case first: no Deferred check)
        return user.get("pk"), str(user.get("id") or ""), str(user.get("email") or "")
    user = resolved(user)
    if user is None:
        return None, "", ""
    if isinstance(user, dict):
        return user.get("pk"), str(user.get("id") or ""), str(user.get("email") or "")
    if hasattr(user, "_meta") and hasattr(user, "pk"):  # a Django user instance
        return user.pk, str(user.pk), str(getattr(user, "email", "") or "")
    return None, str(user), ""


_SECRET = re.compile(r"\b(sk-ant-|sk-|fg_live_|AIza)[A-Za-z0-9_\-]{6,}")


def redact_secrets(text: str) -> str:
    """Mask anything shaped like a provider or FluxGate API key."""
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


def storable_text(value: Any, limit: int | None) -> str:
    """``value`` as text a column takes: no NUL characters nor lone surrogates (which
    UTF-8 can't encode), at most ``limit`` long."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if text.__class__ is not str:
        text = str.__str__(text)  # a str subclass (a str enum) as plain text
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode(errors="replace").decode()
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return text


#: The bounded text fields of a record, in the order :func:`_build` passes them.
_TEXT_FIELDS = (
    "provider", "model", "requested_model", "operation", "end_user_id", "end_user_email",
    "session_id", "conversation_id", "request_id", "feature", "step", "finish_reason",
    "error_type", "cost_source", "service_tier", "run_id", "parent_run_id",
)  # fmt: skip
_TEXT_LIMIT_LIST = tuple(TEXT_LIMITS[name] for name in _TEXT_FIELDS)


def _storable_texts(values: tuple[Any, ...]) -> tuple[str, ...]:
    """:func:`storable_text` of each bounded column's value (``_TEXT_FIELDS`` order; most
    are short plain ASCII, kept as they are: then ``values`` itself)."""
    for value, limit in zip(values, _TEXT_LIMIT_LIST, strict=True):
        if value.__class__ is str and (
            not value or (len(value) <= limit and value.isascii() and "\x00" not in value)
        ):
            continue
        break
    else:
        return values
    return tuple(
        value
        if value.__class__ is str
        and (not value or (len(value) <= limit and value.isascii() and "\x00" not in value))
        else ("" if value is None else storable_text(value, limit))
        for value, limit in zip(values, _TEXT_LIMIT_LIST, strict=True)
    )


def _is_sentinel(value: Any) -> bool:
    """An SDK's "not given" marker (OpenAI's and Anthropic's ``NotGiven``, ``Omit``)."""
    return type(value).__name__ in ("NotGiven", "Omit", "_NotGiven", "_Omit")


def _json_key(key: Any) -> str:
    if key.__class__ is str:
        return storable_text(key, None) if "\x00" in key or not key.isascii() else key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)  # as json.dumps writes such a key
    return storable_text(_json_value(key, MAX_JSON_DEPTH), None)


def _json_value(value: Any, depth: int) -> Any:
    cls = value.__class__
    if cls is str:
        return storable_text(value, None) if "\x00" in value or not value.isascii() else value
    if value is None or cls is bool or cls is int:
        return value
    if cls is float:
        return value if math.isfinite(value) else str(value)  # PostgreSQL's JSON has no NaN
    if cls is dict and depth < MAX_JSON_DEPTH:
        return {
            (k if k.__class__ is str and k.isascii() and "\x00" not in k else _json_key(k)): (
                v
                if v.__class__ is bool or v.__class__ is int or v is None
                else _json_value(v, depth + 1)
            )
            for k, v in value.items()
            if not _is_sentinel(v)
        }
    if isinstance(value, enum.Enum):
        return _json_value(value.value, depth)
    if isinstance(value, str):
        return storable_text(value, None)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _json_value(float(value), depth)
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return storable_text(bytes(value).decode(errors="replace"), None)
    if depth >= MAX_JSON_DEPTH:
        return _object_text(value)
    if isinstance(value, Mapping):
        return {
            _json_key(k): _json_value(v, depth + 1) for k, v in value.items() if not _is_sentinel(v)
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [None if _is_sentinel(v) else _json_value(v, depth + 1) for v in value]
    if _is_sentinel(value):
        return None
    dump = getattr(value, "model_dump", None)  # a pydantic model (an SDK's typed param)
    if callable(dump):
        try:
            return _json_value(dump(mode="json", exclude_unset=True), depth + 1)
        except Exception:
            pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return _json_value(dataclasses.asdict(value), depth + 1)
        except Exception:
            pass
    return _object_text(value)


def _object_text(value: Any) -> str:
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return storable_text(text, MAX_OBJECT_TEXT)


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON that every database stores: dicts with string keys, lists,
    strings, finite numbers, booleans and None. A UUID, ``Decimal``, date or time becomes
    its text, an enum its value, a set or tuple a list, a pydantic model or dataclass its
    fields; an SDK's ``NotGiven``/``Omit`` sentinel is dropped from a dict (None in a
    list); strings and keys lose NUL characters and lone surrogates; NaN and infinities
    become text; anything else (or nesting deeper than ``MAX_JSON_DEPTH``) its ``str()``,
    cut to ``MAX_OBJECT_TEXT``. Never raises."""
    try:
        return _json_value(value, 0)
    except Exception:  # pragma: no cover - a pathological object (str() of a str() raising)
        return _object_text(value)


def storable_cost(value: Any) -> Decimal | str | None:
    """``value`` as a cost the ``cost_usd`` column and the budget counters hold, or the
    reason (a ``str``) it can't be: not a number, not finite, negative, or more than
    ``MAX_EVENT_COST_USD``. None stays None."""
    if value is None:
        return None
    try:
        cost = value if isinstance(value, Decimal) else Decimal(str(value))
        if isinstance(value, bool):
            raise InvalidOperation
    except (InvalidOperation, ValueError, TypeError):
        return "not a number"
    if not cost.is_finite():
        return "not a finite number"
    if cost < 0:
        return "negative"
    if cost > MAX_EVENT_COST_USD:
        return f"more than MAX_EVENT_COST_USD ({MAX_EVENT_COST_USD})"
    return cost


def refuse_unstorable_price(record: EventRecord) -> dict[str, str]:
    """After pricing: refuse a priced cost or saving no column or counter holds (an absurd
    ``ModelPrice`` times a huge count), as :func:`make_record` refuses a given one.
    Returns what was refused (empty: nothing)."""
    refused: dict[str, str] = {}
    for name in ("cost_usd", "cost_saved_usd"):
        value = getattr(record, name)
        if value is None:
            continue
        checked = storable_cost(value)
        if isinstance(checked, str):
            refused[name] = f"priced at {_object_text(value)}: {checked}"
            setattr(record, name, None)
    if refused:
        if "cost_usd" in refused:
            record.cost_source = CostSource.INVALID.value
        record.metadata = {**record.metadata, REFUSED_KEY: refused}
        logger.warning(
            "FluxGate refused the price of event %s (%s/%s): %s; stored without it",
            record.tracking_id,
            record.provider,
            record.model,
            "; ".join(f"{k} {v}" for k, v in refused.items()),
        )
    return refused


def storable_tokens(value: Any) -> int | str:
    """``value`` as a token count its column holds, or the reason (a ``str``) it can't be."""
    if value.__class__ is int and 0 <= value <= MAX_TOKENS:
        return value  # (the common case)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "not an integer"
    if isinstance(value, float):
        if not value.is_integer():
            return "not an integer"
        value = int(value)
    if value < 0:
        return "negative"
    if value > MAX_TOKENS:
        return f"more than a column holds ({MAX_TOKENS})"
    return int(value)


def now() -> dt.datetime:
    """The current time as the site stores it: aware (UTC) unless Django's USE_TZ is off."""
    if settings.configured and not settings.USE_TZ:
        return dt.datetime.now()
    return dt.datetime.now(dt.timezone.utc)


def _decided_cost(
    status: Status,
    openrouter_cost: Decimal | None,
    reported_cost: Decimal | None,
    usage_reported: bool,
    usage_missing_reason: str,
    failed: bool,
    input_tokens: Any,
    output_tokens: Any,
) -> tuple[Decimal | None, str]:
    """The cost when it needs no price: ``(cost, source)``; ``(None, "")`` to price it."""
    if status is Status.BUDGET_EXCEEDED:
        return Decimal(0), CostSource.NOT_SENT.value
    if openrouter_cost is not None:
        return openrouter_cost, CostSource.OPENROUTER.value
    if reported_cost is not None:
        return reported_cost, CostSource.PROVIDER_REPORTED.value
    if not usage_reported:
        return None, str(usage_missing_reason)
    if failed and input_tokens + output_tokens == 0:
        return None, CostSource.NOT_BILLED.value  # a failed call that reported no usage
    return None, ""


def make_record(
    info: CallInfo,
    usage: Usage | None = None,
    ctx: TrackingContext = EMPTY_CONTEXT,
    *,
    source: Source = Source.SDK,
    tracking_id: uuid.UUID | None = None,
    created_at: dt.datetime | None = None,
    latency_ms: float | None = None,
    time_to_first_token_ms: float | None = None,
    stream_duration_ms: float | None = None,
    error: BaseException | None = None,
    error_type: str = "",
    error_message: str | None = None,
    failed: bool | None = None,
    cost_usd: Decimal | None = None,
    cost_source: str = "",
    cost_saved_usd: Decimal | None = None,
    cache_hit: bool = False,
    fallback_attempt: int | None = None,
    run_id: str = "",
    parent_run_id: str = "",
    content: Any = None,
    extra_metadata: dict[str, Any] | None = None,
    budget_reservation: dict[str, Any] | None = None,
    attempt: ServiceAttempt | None = None,
) -> EventRecord:
    """One observed call as an ``EventRecord``.

    ``info``/``usage`` are what a provider adapter read; ``ctx`` is the attribution.
    ``error`` is the exception the call raised; ``failed`` says the call failed when
    there is no exception object (an ingested event). ``cost_usd``/``cost_source``: a
    cost already known (the caller's own, or 0 from the response cache); otherwise the
    cost is decided here where no price is needed, or left for pricing. ``attempt`` is
    the LLM-service attempt the call belongs to (default: the current one).

    The one-call entry of :func:`make_records` (the same builder: a row of its fields).
    """
    usage = usage or Usage()
    if attempt is None:
        attempt = service_attempt.get()
    return _build(
        _storable_team(ctx.team),
        attempt,
        None,
        info.provider,
        info.operation,
        info.requested_model,
        info.model,
        info.finish_reason,
        info.status,
        info.streamed,
        ctx.service_tier or info.service_tier,
        info.usage_reported,
        info.usage_missing_reason,
        info.reported_cost,
        usage.input_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
        ctx.feature,
        ctx.user,
        ctx.step,
        ctx.session_id,
        ctx.conversation_id,
        ctx.request_id,
        ctx.openrouter_cost,
        ctx.metadata,
        ctx.tags,
        source,
        tracking_id,
        created_at,
        latency_ms,
        time_to_first_token_ms,
        stream_duration_ms,
        error,
        error_type,
        error_message,
        failed,
        cost_usd,
        cost_source,
        cost_saved_usd,
        cache_hit,
        fallback_attempt,
        run_id,
        parent_run_id,
        content,
        extra_metadata,
        budget_reservation,
    )


#: The keys a row of :func:`make_records` may have: the fields of ``CallInfo``, ``Usage``
#: and ``TrackingContext`` (but its team), and ``make_record``'s keyword arguments (but
#: ``attempt``, shared by the batch).
ROW_KEYS = frozenset(
    {
        *(f.name for f in dataclasses.fields(CallInfo)),
        *_TOKEN_FIELDS,
        *(f.name for f in dataclasses.fields(TrackingContext) if f.name != "team"),
        "source", "tracking_id", "created_at", "latency_ms", "time_to_first_token_ms",
        "stream_duration_ms", "error", "error_type", "error_message", "failed", "cost_usd",
        "cost_source", "cost_saved_usd", "cache_hit", "fallback_attempt", "run_id",
        "parent_run_id", "content", "extra_metadata", "budget_reservation",
    }
)  # fmt: skip


_USAGE_MISSING = CostSource.USAGE_MISSING.value


def make_records(
    rows: Iterable[Mapping[str, Any]],
    *,
    team: Any = None,
    source: Source | str = Source.SDK,
    created_at: dt.datetime | None = None,
    attempt: ServiceAttempt | None = None,
) -> list[EventRecord]:
    """The records of many calls of one team at once (the ingest API's batches): what
    :func:`make_record` makes of each, with the work the calls share done once.

    A row holds one call's values by name (:data:`ROW_KEYS`): the fields of ``CallInfo``
    and ``Usage``, those of ``TrackingContext`` but its ``team``, and ``make_record``'s
    keyword arguments. An absent key has ``make_record``'s default; ``service_tier`` is
    the tier the call is priced at (``make_record``: the context's, else the call's).
    Shared by every row: ``team`` (a slug, id, ``Team`` or ``Deferred``), the ``source``
    of a row that names none, the ``created_at`` of a row without one (default: now), and
    the LLM-service ``attempt`` (default: the current one). Other keys are ignored.
    """
    if attempt is None:
        attempt = service_attempt.get()
    shared_team = _storable_team(team)
    default_created_at = created_at or now()
    defaults = {**_ROW_DEFAULTS, "source": source}
    values = _row_values
    build = _build
    return [
        build(shared_team, attempt, default_created_at, *values({**defaults, **row}))
        for row in rows
    ]


#: A row's keys in :func:`_build`'s order (after its first three), with the default of
#: an absent one (``source``: :func:`make_records`' own).
_ROW_ORDER: tuple[tuple[str, Any], ...] = (
    ("provider", None), ("operation", None), ("requested_model", ""), ("model", ""),
    ("finish_reason", ""), ("status", Status.SUCCESS), ("streamed", False),
    ("service_tier", ""), ("usage_reported", True), ("usage_missing_reason", _USAGE_MISSING),
    ("reported_cost", None), ("input_tokens", 0), ("output_tokens", 0),
    ("reasoning_tokens", 0), ("cache_read_tokens", 0), ("cache_write_tokens", 0),
    ("cache_write_1h_tokens", 0), ("feature", None), ("user", None), ("step", None),
    ("session_id", None), ("conversation_id", None), ("request_id", None),
    ("openrouter_cost", None), ("metadata", None), ("tags", ()), ("source", None),
    ("tracking_id", None), ("created_at", None), ("latency_ms", None),
    ("time_to_first_token_ms", None), ("stream_duration_ms", None), ("error", None),
    ("error_type", ""), ("error_message", None), ("failed", None), ("cost_usd", None),
    ("cost_source", ""), ("cost_saved_usd", None), ("cache_hit", False),
    ("fallback_attempt", None), ("run_id", ""), ("parent_run_id", ""), ("content", None),
    ("extra_metadata", None), ("budget_reservation", None),
)  # fmt: skip
_ROW_DEFAULTS = dict(_ROW_ORDER)
_row_values = operator.itemgetter(*(key for key, _ in _ROW_ORDER))


def _storable_team(team: Any) -> Any:
    team = resolved(team)
    return storable_text(team, 100) if isinstance(team, str) else team


def _build(  # every field of a record, positional: no per-call dict
    team: Any,
    attempt: ServiceAttempt | None,
    default_created_at: dt.datetime | None,
    provider: Any,
    operation: Any,
    requested_model: str,
    model: str,
    finish_reason: str,
    status: Any,
    streamed: bool,
    service_tier: str | None,
    usage_reported: bool,
    usage_missing_reason: str,
    reported_cost: Decimal | None,
    input_tokens: Any,
    output_tokens: Any,
    reasoning_tokens: Any,
    cache_read_tokens: Any,
    cache_write_tokens: Any,
    cache_write_1h_tokens: Any,
    feature: str | None,
    user: Any,
    step: str | None,
    session_id: str | None,
    conversation_id: str | None,
    request_id: str | None,
    openrouter_cost: Decimal | None,
    metadata: Any,
    tags: Any,
    source: Any,
    tracking_id: uuid.UUID | None,
    created_at: dt.datetime | None,
    latency_ms: float | None,
    time_to_first_token_ms: float | None,
    stream_duration_ms: float | None,
    error: BaseException | None,
    error_type: str,
    error_message: str | None,
    failed: bool | None,
    cost_usd: Any,
    cost_source: str,
    cost_saved_usd: Any,
    cache_hit: bool,
    fallback_attempt: int | None,
    run_id: str,
    parent_run_id: str,
    content: Any,
    extra_metadata: Mapping[str, Any] | None,
    budget_reservation: dict[str, Any] | None,
) -> EventRecord:
    """The one builder: the record of one call (the values of a row of :func:`make_records`,
    in :data:`ROW_KEYS`' meaning), with ``team`` already storable."""
    tracking_id = tracking_id or uuid.uuid4()
    if attempt is not None:
        source = attempt.source
        if fallback_attempt is None:
            fallback_attempt = attempt.fallback_attempt
    if failed is None:
        failed = error is not None
    if status.__class__ is not Status:
        status = Status(status)
    refused: dict[str, str] = {}
    counts = [
        input_tokens,
        output_tokens,
        reasoning_tokens,
        cache_read_tokens,
        cache_write_tokens,
        cache_write_1h_tokens,
    ]
    for i, count in enumerate(counts):
        if count.__class__ is int and 0 <= count <= MAX_TOKENS:
            continue  # (the common case: storable_tokens() keeps it as it is)
        checked = storable_tokens(count)
        if checked.__class__ is str:
            refused[_TOKEN_FIELDS[i]] = f"{_object_text(count)}: {checked}"
            counts[i] = 0
        else:
            counts[i] = checked
    if cost_usd is None and not cost_source:
        cost_usd, cost_source = _decided_cost(
            status,
            openrouter_cost,
            reported_cost,
            usage_reported,
            usage_missing_reason,
            failed,
            input_tokens,
            output_tokens,
        )
    elif cost_usd is not None and not cost_source:
        cost_source = CostSource.CLIENT.value
    cost = storable_cost(cost_usd)
    if cost.__class__ is str:
        refused["cost_usd"] = f"{_object_text(cost_usd)}: {cost}"
        cost_usd, cost_source = None, CostSource.INVALID.value
    else:
        cost_usd = cost
        if refused and not cost_source:  # not to be priced from counts it could not keep
            cost_source = CostSource.INVALID.value
    if cost_saved_usd is not None:
        saved = storable_cost(cost_saved_usd)
        if saved.__class__ is str:
            refused["cost_saved_usd"] = f"{_object_text(cost_saved_usd)}: {saved}"
            cost_saved_usd = None
        else:
            cost_saved_usd = saved
    user_pk, end_user_id, email = user_fields(user)
    metadata = json_safe(metadata) if metadata else {}
    if not isinstance(metadata, dict):
        metadata = {"value": metadata}
    if extra_metadata:
        metadata.update(json_safe(dict(extra_metadata)))
    model = model or requested_model
    if refused:
        metadata[REFUSED_KEY] = refused
        logger.warning(
            "FluxGate refused values of event %s (%s/%s): %s; stored without them",
            tracking_id,
            provider,
            model,
            "; ".join(f"{k} {v}" for k, v in refused.items()),
        )
    if error_message is None:
        # SDK errors carry the provider's error text (never request headers or prompts);
        # a provider may still echo part of a key back ("Incorrect API key: sk-...").
        error_message = str(error)[:MAX_ERROR_MESSAGE] if error is not None else ""
    if not error_type and error is not None:
        error_type = type(error).__name__
    if error_message.__class__ is not str or error_message:  # ("" stays "")
        error_message = redact_secrets(storable_text(error_message, MAX_ERROR_MESSAGE))
    (
        provider,
        model,
        requested_model,
        operation,
        end_user_id,
        email,
        session_id,
        conversation_id,
        request_id,
        feature,
        step,
        finish_reason,
        error_type,
        cost_source,
        service_tier,
        run_id,
        parent_run_id,
    ) = _storable_texts(
        (
            provider,
            model,
            requested_model,
            operation,
            end_user_id,
            email,
            session_id,
            conversation_id,
            request_id,
            feature,
            step,
            finish_reason,
            error_type,
            cost_source,
            service_tier,
            run_id,
            parent_run_id,
        )
    )
    # (Positional, in EventRecord's field order — checked below, at import: keywords cost
    # four times as much.)
    return EventRecord(
        tracking_id,
        created_at or default_created_at or now(),
        provider,
        model,
        operation,
        status._value_,  # (.value: the enum's descriptor, slower)
        _source_value(source),
        requested_model,
        team,
        user_pk,
        end_user_id,
        email,
        session_id,
        conversation_id,
        request_id,
        feature,
        step,
        finish_reason,
        error_type,
        error_message,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
        cost_usd,
        cost_source,
        cost_saved_usd,
        latency_ms,
        time_to_first_token_ms,
        stream_duration_ms,
        streamed,
        cache_hit,
        fallback_attempt or 0,
        service_tier,
        run_id,
        parent_run_id,
        metadata,
        [storable_text(_json_value(t, 0), None) for t in tags] if tags else [],
        None if content is None else json_safe(content),
        budget_reservation,
    )


#: The fields :func:`_build` gives ``EventRecord`` positionally, in this order.
_BUILT_FIELDS = (
    "tracking_id", "created_at", "provider", "model", "operation", "status", "source",
    "requested_model", "team", "user_pk", "end_user_id", "end_user_email", "session_id",
    "conversation_id", "request_id", "feature", "step", "finish_reason", "error_type",
    "error_message", "input_tokens", "output_tokens", "reasoning_tokens",
    "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "cost_usd",
    "cost_source", "cost_saved_usd", "latency_ms", "time_to_first_token_ms",
    "stream_duration_ms", "streamed", "cache_hit", "fallback_attempt", "service_tier",
    "run_id", "parent_run_id", "metadata", "tags", "content", "budget_reservation",
)  # fmt: skip
if EVENT_RECORD_FIELDS[: len(_BUILT_FIELDS)] != _BUILT_FIELDS:  # pragma: no cover
    raise RuntimeError(
        "EventRecord's fields are not in the order the record builder passes them "
        "(fluxgate_django.builder._BUILT_FIELDS): update _build with them"
    )


#: ``Source(source).value`` of a member or value, without the enum call.
_SOURCE_VALUES: dict[Any, str] = {
    **{s: s.value for s in Source},
    **{s.value: s.value for s in Source},
}


def _source_value(source: Any) -> str:
    if source.__class__ is Source or source.__class__ is str:
        value = _SOURCE_VALUES.get(source)
        if value is not None:
            return value
    return Source(source).value
