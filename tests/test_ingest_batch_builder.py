"""The batch entry of the record builder (``make_records``, what the ingest API uses) builds,
field by field, the record ``make_record`` builds for the same call: on generated input,
poison values included (NUL characters, lone surrogates, over-long text, counts and costs
no column holds, UUIDs, dates, ``Decimal``s, SDK sentinels and deep nesting in metadata
and content, secrets in error messages), and for events of the ingest API against the
``make_record`` call the API made of an event before it had a batch form. Both entries
share the builder's value handling (tested for itself in ``test_builder.py``): what this
checks is the batch entry's mapping of fields and its defaults."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from fluxgate_django.api.ingest import EventIngestSerializer, to_records, validate_event
from fluxgate_django.builder import (
    MAX_TOKENS,
    ROW_KEYS,
    ServiceAttempt,
    make_record,
    make_records,
    service_attempt,
)
from fluxgate_django.context import Deferred, TrackingContext
from fluxgate_django.guard import charge_ingested
from fluxgate_django.money import MAX_EVENT_COST_USD
from fluxgate_django.records import CallInfo, CostSource, EventRecord, Source, Status, Usage
from tests.api_helpers import event_payload, make_budget, make_world

FIELDS = tuple(f.name for f in dataclasses.fields(EventRecord))
INFO_FIELDS = tuple(f.name for f in dataclasses.fields(CallInfo))
USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))
CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(TrackingContext) if f.name != "team")
#: ``make_record``'s keyword arguments that a row carries as they are.
KWARGS = tuple(sorted(ROW_KEYS - set(INFO_FIELDS) - set(USAGE_FIELDS) - set(CONTEXT_FIELDS)))


class Omit:
    """Like the Anthropic SDK's ``Omit`` sentinel (the builder knows it by its name)."""


class Tier(str, enum.Enum):
    FLEX = "flex"


class LazyTeam(Deferred):
    def __init__(self, value: Any) -> None:
        self.value = value

    def resolve(self) -> Any:
        return self.value


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels):
        value = {"k": value}
    return value


NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
TEXTS = ["", "plain", "x" * 300, "nul\x00in", "lone \ud800 surrogate", "ünïcødé", Tier.FLEX]
OPTIONAL_TEXTS = [None, *TEXTS]
COUNTS = [0, 7, 1234, MAX_TOKENS]
POISON_COUNTS = [MAX_TOKENS + 1, -1, 3.0, 2.5, True, "7"]
COSTS = [None, None, Decimal("0.0125"), Decimal(0), MAX_EVENT_COST_USD]
POISON_COSTS = [
    MAX_EVENT_COST_USD + 1,
    Decimal("-1"),
    Decimal("NaN"),
    Decimal("Infinity"),
    0.5,
    "abc",
    True,
]
METADATA = [
    None,
    {},
    {"page": "home", "n": [1, 2.5, None, True]},
    {"id": uuid.UUID(int=5), "at": NOW, "day": NOW.date(), "price": Decimal("1.5")},
    {"nul\x00key": "nul\x00value", "nan": float("nan"), "inf": float("-inf")},
    {"omitted": Omit(), "kept": 1, 7: "int key", None: "none key"},
    {"tier": Tier.FLEX, "set": {1}, "tuple": (1, "a"), "bytes": b"\xff\x00ab"},
    deep(40),
    ["not", "a", "dict"],
]
TAGS = [(), ["a", "b"], ["nul\x00", "x" * 500], [uuid.UUID(int=9), Tier.FLEX, 3], ("t",)]
USERS = [
    None,
    "user-1",
    42,
    {"id": "u\x00", "email": "e@example.com"},
    {"id": 5, "email": None, "pk": 3},
    {"email": "only@example.com"},
]
ERRORS = [
    None,
    ValueError("Incorrect API key: sk-abcdefghijklmnop"),
    RuntimeError("x" * 3000),
]
ERROR_MESSAGES = [None, "", "key fg_live_abcdefghij leaked", "nul\x00" + "m" * 2500, 0]
CONTENT = [None, "text", {"messages": [{"role": "user", "content": "hi"}], "top_p": Omit()}]
TEAMS = [None, "team-a", "nul\x00team" + "t" * 200, 7]


def random_row(rng: random.Random) -> dict[str, Any]:
    """One call's values under ``make_records``' row keys (some absent: the defaults)."""
    pick = rng.choice
    row: dict[str, Any] = {
        "provider": pick(TEXTS),
        "operation": pick(TEXTS),
        "tracking_id": uuid.UUID(int=rng.getrandbits(128)),
    }
    optional: dict[str, Any] = {
        "requested_model": pick(TEXTS),
        "model": pick(TEXTS),
        "finish_reason": pick(TEXTS),
        "status": pick(list(Status)),
        "streamed": pick([True, False]),
        "service_tier": pick(TEXTS),
        "usage_reported": pick([True, False]),
        "usage_missing_reason": pick([CostSource.USAGE_MISSING.value, "not-billed", "x" * 80]),
        "reported_cost": pick([None, Decimal("0.3"), Decimal("-2")]),
        **{name: pick(POISON_COUNTS if rng.random() < 0.1 else COUNTS) for name in USAGE_FIELDS},
        "feature": pick(OPTIONAL_TEXTS),
        "user": pick(USERS),
        "step": pick(OPTIONAL_TEXTS),
        "session_id": pick(OPTIONAL_TEXTS),
        "conversation_id": pick(OPTIONAL_TEXTS),
        "request_id": pick(OPTIONAL_TEXTS),
        "openrouter_cost": pick([None, Decimal("0.02")]),
        "metadata": pick(METADATA),
        "tags": pick(TAGS),
        "source": pick([*Source, *(s.value for s in Source)]),
        "created_at": pick([None, NOW, NOW - dt.timedelta(days=400)]),
        "latency_ms": pick([None, 0.0, 12.5]),
        "time_to_first_token_ms": pick([None, 3.0]),
        "stream_duration_ms": pick([None, 40.0]),
        "error": pick(ERRORS),
        "error_type": pick(["", "RateLimitError", "nul\x00" + "e" * 300]),
        "error_message": pick(ERROR_MESSAGES),
        "failed": pick([None, True, False]),
        "cost_usd": pick(POISON_COSTS if rng.random() < 0.15 else COSTS),
        "cost_source": pick(["", "client", "response-cache"]),
        "cost_saved_usd": pick(POISON_COSTS if rng.random() < 0.15 else COSTS),
        "cache_hit": pick([True, False]),
        "fallback_attempt": pick([None, 0, 2]),
        "run_id": pick(TEXTS),
        "parent_run_id": pick(TEXTS),
        "content": pick(CONTENT),
        "extra_metadata": pick([None, {}, {"extra": uuid.UUID(int=1)}, {"k\x00": "v"}]),
        "budget_reservation": pick([None, {"counters": [1, 2], "estimate_units": 0}]),
    }
    for name, value in optional.items():
        if rng.random() < 0.6:
            row[name] = value
    return row


def by_make_record(
    row: dict[str, Any], team: Any, source: Any, created_at: dt.datetime, attempt: Any
) -> EventRecord:
    """What ``make_record`` builds for the call of ``row`` (``make_records``' meaning)."""
    kwargs = {name: row[name] for name in KWARGS if name in row}
    kwargs.setdefault("source", source)
    kwargs["created_at"] = row.get("created_at") or created_at
    return make_record(
        CallInfo(**{name: row[name] for name in INFO_FIELDS if name in row}),
        Usage(**{name: row[name] for name in USAGE_FIELDS if name in row}),
        TrackingContext(team=team, **{name: row[name] for name in CONTEXT_FIELDS if name in row}),
        attempt=attempt,
        **kwargs,
    )


def outcome(build: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return build(*args, **kwargs)
    except Exception as exc:  # e.g. a count of "7" summed with an int, as make_record does
        return type(exc)


def assert_same_record(batch: Any, single: Any, context: Any) -> None:
    if not isinstance(single, EventRecord):
        assert batch is single, context  # the same exception class
        return
    assert isinstance(batch, EventRecord), context
    for name in FIELDS:
        assert getattr(batch, name) == getattr(single, name), (name, context)
        assert type(getattr(batch, name)) is type(getattr(single, name)), (name, context)
    assert batch == single


@pytest.mark.parametrize("seed", range(4))
def test_make_records_builds_what_make_record_builds(seed):
    rng = random.Random(seed)
    for _ in range(150):
        team = rng.choice(TEAMS)
        if rng.random() < 0.2:
            team = LazyTeam(team)
        source = rng.choice([Source.API, "langchain", Source.SDK])
        attempt = rng.choice([None, None, ServiceAttempt(Source.SERVICE, 3)])
        rows = [random_row(rng) for _ in range(rng.randint(1, 6))]
        singles = [outcome(by_make_record, r, team, source, NOW, attempt) for r in rows]
        built = outcome(
            make_records, rows, team=team, source=source, created_at=NOW, attempt=attempt
        )
        if any(not isinstance(s, EventRecord) for s in singles):
            # (A row make_record can't build fails the batch, with make_record's exception.)
            assert built is next(s for s in singles if not isinstance(s, EventRecord))
            continue
        assert isinstance(built, list) and len(built) == len(rows)
        for record, single, row in zip(built, singles, rows, strict=True):
            assert_same_record(record, single, row)


def test_each_row_takes_make_records_defaults_as_make_record_does():
    call = {"provider": "openai", "operation": "chat"}
    (record,) = make_records([call], created_at=NOW)
    single = make_record(CallInfo(**call), created_at=NOW)
    record.tracking_id = single.tracking_id  # (generated: each its own)
    assert_same_record(record, single, call)
    before = timezone.now()
    (record,) = make_records([call])  # created_at: now, as make_record's
    assert before <= record.created_at <= timezone.now()


def test_the_current_service_attempt_applies_to_every_row():
    token = service_attempt.set(ServiceAttempt(Source.SERVICE, 2))
    try:
        rows = [{"provider": "openai", "operation": "chat", "tracking_id": uuid.uuid4()}] * 2
        records = make_records(rows, source=Source.API, created_at=NOW)
        single = make_record(
            CallInfo(provider="openai", operation="chat"),
            tracking_id=rows[0]["tracking_id"],
            created_at=NOW,
            source=Source.API,
        )
    finally:
        service_attempt.reset(token)
    for record in records:
        assert_same_record(record, single, rows[0])
    assert records[0].source == "service" and records[0].fallback_attempt == 2


# -- the ingest API's events -------------------------------------------------------------------


def former_to_record(data: dict[str, Any], team: Any, received_at: dt.datetime) -> EventRecord:
    """The record the ingest API made of one validated event before its batch form: a
    ``make_record`` call (the API's semantics of each field, as they were)."""
    usage = Usage(**{name: data[name] for name in USAGE_FIELDS})
    cost = data.get("cost_usd")
    reason = data["cost_source"]
    status = Status(data["status"])
    info = CallInfo(
        provider=data["provider"],
        operation=data["operation"],
        requested_model=data["requested_model"],
        model=data["model"],
        finish_reason=data["finish_reason"],
        status=status,
        streamed=data["streamed"],
        service_tier=data["service_tier"],
        usage_reported=bool(cost is not None or (not reason and data["usage_reported"])),
        usage_missing_reason=reason or CostSource.USAGE_MISSING.value,
    )
    end_user = None
    if data["end_user_id"] or data["end_user_email"]:
        end_user = {"id": data["end_user_id"], "email": data["end_user_email"]}
    ctx = TrackingContext(
        feature=data["feature"] or None,
        user=end_user,
        team=team,
        step=data["step"] or None,
        session_id=data["session_id"] or None,
        conversation_id=data["conversation_id"] or None,
        request_id=data["request_id"] or None,
        metadata=data["metadata"],
        tags=tuple(data["tags"]),
    )
    created_at = data.get("created_at") or received_at
    charge = charge_ingested(team.pk, data["feature"], created_at)
    return make_record(
        info,
        usage,
        ctx,
        source=Source(data["source"]),
        tracking_id=data["tracking_id"],
        created_at=created_at,
        latency_ms=data.get("latency_ms"),
        time_to_first_token_ms=data.get("time_to_first_token_ms"),
        stream_duration_ms=data.get("stream_duration_ms"),
        failed=status in (Status.ERROR, Status.MALFORMED_REQUEST),
        error_type=data["error_type"],
        error_message=data["error_message"],
        cost_usd=cost,
        cost_source=(reason or CostSource.CLIENT.value) if cost is not None else "",
        cost_saved_usd=data.get("cost_saved_usd"),
        cache_hit=data["cache_hit"],
        fallback_attempt=data["fallback_attempt"],
        run_id=data["run_id"],
        parent_run_id=data["parent_run_id"],
        budget_reservation=None if charge is None else dict(charge),
    )


def random_payload(rng: random.Random) -> dict[str, Any]:
    pick = rng.choice
    fields: dict[str, Any] = {
        "tracking_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "model": pick(["gpt-4o", "gpt-4o-mini", "no-such-model", "", None]),
        "requested_model": pick(["gpt-4o", "", None]),
        "status": pick([s.value for s in Status]),
        "source": pick(["api", "langchain"]),
        "feature": pick(["", "search", "chat", None, "f" * 100]),
        "step": pick(["", "plan", None]),
        "session_id": pick(["", "s-1", None]),
        "conversation_id": pick(["", "c-1"]),
        "request_id": pick(["", "r-1"]),
        "end_user_id": pick(["", "u-1", None]),
        "end_user_email": pick(["", "e@example.com"]),
        "finish_reason": pick(["", "stop"]),
        "error_type": pick(["", "RateLimitError"]),
        "error_message": pick(["", "rate limited; key sk-abcdefghijklmno", "m" * 3000]),
        "input_tokens": pick([0, 1000, 2_147_483_647]),
        "output_tokens": pick([0, 500, 2_147_483_647]),
        "reasoning_tokens": pick([0, 20]),
        "cache_read_tokens": pick([0, 100]),
        "cache_write_tokens": pick([0, 50]),
        "cache_write_1h_tokens": pick([0, 10]),
        "usage_reported": pick([True, False]),
        "cost_usd": pick([None, "0.01", "0", str(MAX_EVENT_COST_USD)]),
        "cost_source": pick(["", "not-billed", "usage-missing", "provider-reported"]),
        "cost_saved_usd": pick([None, "0.002"]),
        "latency_ms": pick([None, 0, 120.5]),
        "time_to_first_token_ms": pick([None, 30]),
        "stream_duration_ms": pick([None, 400.25]),
        "streamed": pick([True, False]),
        "cache_hit": pick([True, False]),
        "fallback_attempt": pick([0, 2]),
        "service_tier": pick(["", "flex", None]),
        "run_id": pick(["", "run-1"]),
        "parent_run_id": pick(["", "run-0"]),
        "metadata": pick(
            [{}, {"page": "home"}, {"n": [1, 2.5, None, True], "d": {"e": "ü"}}, deep(15)]
        ),
        "tags": pick([[], ["a", "b"], ["t" * 100]]),
        "created_at": pick([None, "2026-01-01T00:00:00Z", "2026-03-01T12:30:00+02:00"]),
        "team": pick([None, "", "a"]),
    }
    payload = event_payload()
    for name, value in fields.items():
        if rng.random() < 0.7:
            if value is None and name in ("created_at", "cost_usd", "cost_saved_usd"):
                payload.pop(name, None)
            else:
                payload[name] = value
    return payload


@pytest.mark.django_db
@pytest.mark.parametrize("charge_client_costs", [True, False])
def test_to_records_builds_what_make_record_built_for_ingested_events(charge_client_costs):
    """(Without ``charge_client_costs`` — a key without ``may_charge_budgets`` — an event
    whose client gave the cost carries no budget charge and notes that it has none.)"""
    w = make_world()
    make_budget(w.team_a, period="day")
    make_budget(w.team_a, period="month", feature="search")
    rng = random.Random(7)
    context = {"team": w.team_a}
    received_at = timezone.now()
    compiled = 0
    for _ in range(40):
        events = []
        for _ in range(rng.randint(1, 12)):
            payload = random_payload(rng)
            event = validate_event(payload, context)
            if event is None:
                serializer = EventIngestSerializer(data=payload, context=context)
                assert serializer.is_valid(), (payload, serializer.errors)
                event = dict(serializer.validated_data)
            else:
                compiled += 1
            events.append(event)
        records = to_records(events, w.team_a, received_at, charge_client_costs=charge_client_costs)
        assert len(records) == len(events)
        for record, event in zip(records, events, strict=True):
            expected = former_to_record(event, w.team_a, received_at)
            if not charge_client_costs and event.get("cost_usd") is not None:
                expected.budget_reservation = None
                expected.metadata = {**expected.metadata, "budget_charged_usd": "0"}
            assert_same_record(record, expected, event)
    assert compiled > 100


@pytest.mark.parametrize("seed", range(5))
def test_the_texts_are_made_storable_each_as_storable_text_makes_it(seed):
    """``_storable_texts`` keeps a tuple of texts that all are short plain ASCII as it is,
    and otherwise gives each value what ``storable_text`` gives it (a ``str`` subclass
    becomes a plain ``str``; ``None`` is empty)."""
    from fluxgate_django.builder import _TEXT_FIELDS, TEXT_LIMITS, _storable_texts, storable_text

    rng = random.Random(seed)
    pool = [*OPTIONAL_TEXTS, "a" * 49, "b" * 50, "c" * 51, "d" * 255, "e" * 256, 7]
    for _ in range(300):
        plain = rng.random() < 0.3
        values = tuple(
            rng.choice(["", "openai", "gpt-4o", "u-1"]) if plain else rng.choice(pool)
            for _ in _TEXT_FIELDS
        )
        got = _storable_texts(values)
        expected = tuple(
            "" if v is None else storable_text(v, TEXT_LIMITS[name])
            for v, name in zip(values, _TEXT_FIELDS, strict=True)
        )
        assert got == expected
        assert all(type(v) is str for v in got)
        if plain:
            assert got is values
