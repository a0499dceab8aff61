"""``POST events/``: validate posted events, price them, and record them through the pipeline.

A request carries one event object or ``{"events": [...]}`` (what
``fluxgate_langchain``'s remote sender posts: ``EventRecord.to_json()`` plus
``cache_write_1h_tokens`` and ``usage_reported``). A batch is all-or-nothing: every item
is validated first, and one bad item is a 400 with its errors under its index, and
nothing of the batch is stored. Accepted means storable: text fields must be JSON strings
(a number or an object is refused, not coerced), values the columns or the budget
counters can't hold are refused (NUL characters, a cost over ``MAX_EVENT_COST_USD``, as
given or as priced here), and a ``tracking_id`` repeated in one batch must repeat the
same event (then it is stored once and answered as a duplicate). The answer lists every
posted event, in order, as stored by this request or a duplicate. A chunked body (no
``Content-Length``) is read (:func:`accept_chunked_body`).

Validation is :class:`EventIngestSerializer`'s, run by a compiled form of it
(:mod:`.validator`) that hands any value it can't decide to the serializer itself, so the
field errors are the serializer's.

An event's team is the API key's team; a payload naming another team is refused. An
event without ``cost_usd`` is priced here by the same code as every other event
(``make_records``, then pricing), unless its ``cost_source`` says why it can't be
(``usage-missing``, ``not-billed``...). Events go through the site's recorder like any
other event, are stored idempotently by ``tracking_id``, and are charged to the team's
budgets (the budget guard's ``charge_ingested``) in the transaction that stores them.

A cost the client supplied (``cost_usd`` given) counts towards the team's budgets only if
the key may say so (``ApiKey.may_charge_budgets``, off by default): otherwise a key could
exhaust its team's budgets, and block the team's real calls, with made-up costs. Such an
event is stored and reported all the same; it notes ``metadata["budget_charged_usd"] =
"0"`` (``ledger.BUDGET_CHARGED_KEY``: what budgets counted, so that ``reconcile`` and a
budget created later count it alike; runaway detection skips it too), and the answer
says ``counts_towards_budgets: false``. An event priced here counts, whatever the key.
That metadata key is FluxGate's: a client's own value of it is dropped.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import io
import json
import re
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connections, router
from django.http import HttpRequest
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..builder import REFUSED_KEY, make_records, now
from ..guard import charge_ingested
from ..ledger import BUDGET_CHARGED_KEY
from ..models import COST_FIELD, Event, Team
from ..money import MAX_EVENT_COST_USD
from ..pipeline import finish_record, submit_batch
from ..records import FAILED_STATUSES, CostSource, EventRecord, Source, Status
from .validator import (
    CANONICAL_UUID,
    FALLBACK,
    compile_boolean,
    compile_float,
    compile_integer,
    compile_serializer,
    compile_text,
    compile_uuid,
    register,
)

try:
    import psycopg
except ImportError:  # pragma: no cover - sites without PostgreSQL (or on psycopg2)
    psycopg = None  # type: ignore[assignment]

#: Most events in one request.
MAX_BATCH_SIZE = 1000
#: Largest ``metadata`` of one event, as compact UTF-8 JSON.
MAX_METADATA_BYTES = 16 * 1024
#: Deepest nesting of ``metadata``.
MAX_METADATA_DEPTH = 20
MAX_TAGS = 50
MAX_TAG_LENGTH = 100
MAX_ERROR_MESSAGE_LENGTH = 4000
#: How far ahead of the server's clock ``created_at`` may be (client clock skew).
MAX_CLOCK_SKEW = dt.timedelta(hours=1)
#: The earliest ``created_at`` (older dates can't be placed in every time zone's windows).
MIN_CREATED_AT = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)

_INT32_MAX = 2_147_483_647  # PositiveIntegerField on every database
_INT16_MAX = 32_767  # PositiveSmallIntegerField
_MAX_DURATION_MS = 1e10  # ~115 days
#: Sources a client may claim; SDK and service events are recorded in-process only.
INGEST_SOURCES = (Source.API.value, Source.LANGCHAIN.value)
STATUSES = tuple(s.value for s in Status)


def _column_length(name: str) -> int | None:
    return getattr(Event._meta.get_field(name), "max_length", None)


class TextField(serializers.CharField):
    """DRF's ``CharField`` for JSON strings only: a number, boolean, list or object is
    refused ("Not a valid string."), not turned into its ``str()``."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


register(TextField, compile_text)


class JSONBooleanField(serializers.BooleanField):
    """JSON ``true`` or ``false`` only (DRF's also takes 0, 1, "yes", "true"...)."""

    def to_internal_value(self, data: Any) -> bool:
        if data is True or data is False:
            return data
        self.fail("invalid", input=data)
        return False  # pragma: no cover - fail() raises


class JSONIntegerField(serializers.IntegerField):
    """A JSON number without a fraction only (DRF's also takes the string "5")."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class JSONFloatField(serializers.FloatField):
    """A JSON number only (DRF's also takes the string "1.5", and true)."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class CanonicalUUIDField(serializers.UUIDField):
    """A UUID string in its canonical 8-4-4-4-12 form (DRF's also takes 32 hex digits,
    ``urn:uuid:...``, braces and integers)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str) or not CANONICAL_UUID.fullmatch(data):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


#: A decimal in plain notation (its digits and range are the field's to check).
_PLAIN_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


class DecimalStringField(serializers.DecimalField):
    """A decimal as a JSON string in plain notation, as the schema's pattern says (DRF's
    also takes numbers, ``"1e3"``, ``"+1"``, ``" 1 "``, and ``""`` for null)."""

    def validate_empty_values(self, data: Any) -> Any:
        # (DRF's takes a blank string for null)
        return serializers.Field.validate_empty_values(self, data)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str) or not _PLAIN_DECIMAL.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


#: An RFC 3339 date-time (JSON Schema's ``date-time``): a date, ``T``, a time, an offset.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})"
)


class RFC3339DateTimeField(serializers.DateTimeField):
    """An RFC 3339 date-time only, its offset included (DRF's also takes a bare date, a
    space for the ``T``, and a time without offset, read in the site's time zone)."""

    def to_internal_value(self, value: Any) -> Any:
        if not isinstance(value, str) or not _RFC3339.fullmatch(value):
            self.fail("invalid", format="YYYY-MM-DDThh:mm:ss[.uuuuuu]±hh:mm (or Z)")
        return super().to_internal_value(value)


register(JSONBooleanField, compile_boolean)
register(JSONIntegerField, compile_integer)
register(JSONFloatField, compile_float)
register(CanonicalUUIDField, functools.partial(compile_uuid, canonical=True))


def _text(name: str, **kwargs: Any) -> serializers.CharField:
    """An optional text field bounded like the ``Event`` column it is stored in."""
    return TextField(
        max_length=kwargs.pop("max_length", None) or _column_length(name),
        required=False,
        allow_blank=True,
        allow_null=True,
        default="",
        **kwargs,
    )


def _tokens(help_text: str) -> serializers.IntegerField:
    return JSONIntegerField(
        min_value=0, max_value=_INT32_MAX, required=False, default=0, help_text=help_text
    )


def _duration(help_text: str) -> serializers.FloatField:
    return JSONFloatField(
        min_value=0,
        max_value=_MAX_DURATION_MS,
        required=False,
        allow_null=True,
        help_text=help_text,
    )


def _money(help_text: str) -> serializers.DecimalField:
    return DecimalStringField(
        **COST_FIELD,
        min_value=0,
        max_value=MAX_EVENT_COST_USD,
        required=False,
        allow_null=True,
        coerce_to_string=True,
        help_text=help_text,
    )


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "integer"}], "nullable": True},
)
class TeamReferenceField(serializers.Field):
    """A team given as a slug or id; must be the API key's own team (or absent)."""

    default_error_messages = {
        "invalid": "Expected a team slug or id.",
        "other_team": "This API key records events for team {team!r} only.",
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, (str, int)):
            self.fail("invalid")
        team: Team = self.context["team"]
        if data in ("", team.slug, team.pk, str(team.pk)):
            return team
        self.fail("other_team", team=team.slug)
        return None  # pragma: no cover - fail() raises

    def to_representation(self, value: Any) -> Any:
        return getattr(value, "slug", value)


class MetadataField(serializers.JSONField):
    """A JSON object, checked for depth and NUL characters before DRF serialises it (deep
    nesting would otherwise exhaust the stack in ``json.dumps``)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        check_json_strings(data)
        return super().to_internal_value(data)


class EventIngestSerializer(serializers.Serializer):
    """One LLM call to record. Only ``provider`` is required."""

    tracking_id = CanonicalUUIDField(
        required=False,
        help_text="Unique id of the call; an event already stored with it is skipped. "
        "Generated when absent (then a retry would store the event twice).",
    )
    created_at = RFC3339DateTimeField(required=False, help_text="Default: now.")
    provider = TextField(max_length=_column_length("provider"))
    model = _text("model", help_text="The model that served the call.")
    requested_model = _text("requested_model")
    operation = _text("operation", help_text="chat, completion, embeddings, responses...")
    status = serializers.ChoiceField(choices=STATUSES, required=False, default="SUCCESS")
    source = serializers.ChoiceField(
        choices=INGEST_SOURCES, required=False, default=Source.API.value
    )
    team = TeamReferenceField(
        required=False,
        allow_null=True,
        help_text="Optional; if given, the slug or id of the API key's team.",
    )
    end_user_id = _text("end_user_id")
    end_user_email = _text("end_user_email")
    session_id = _text("session_id")
    conversation_id = _text("conversation_id")
    request_id = _text("request_id")
    feature = _text("feature")
    step = _text("step")
    finish_reason = _text("finish_reason")
    error_type = _text("error_type")
    error_message = _text("error_message", max_length=MAX_ERROR_MESSAGE_LENGTH)
    input_tokens = _tokens("All input tokens, cache reads and writes included.")
    output_tokens = _tokens("All output tokens, reasoning included.")
    reasoning_tokens = _tokens("Of the output, reasoning tokens.")
    cache_read_tokens = _tokens("Of the input, tokens read from the provider's cache.")
    cache_write_tokens = _tokens("Of the input, tokens written to the provider's cache.")
    cache_write_1h_tokens = _tokens("Of the cache writes, those with a 1-hour TTL (pricing).")
    usage_reported = JSONBooleanField(
        required=False,
        default=True,
        help_text="False if the provider reported no usage: the event is not priced.",
    )
    cost_usd = _money("The call's cost, if known; absent: priced by the server.")
    cost_source = _text(
        "cost_source",
        help_text="With cost_usd: where it comes from. Without: why the call can't be "
        "priced (e.g. usage-missing, not-billed); empty to have the server price it.",
    )
    cost_saved_usd = _money("Saving from a cache hit.")
    latency_ms = _duration("Total duration of the call.")
    time_to_first_token_ms = _duration("Streams: time to the first token.")
    stream_duration_ms = _duration("Streams: time from the first to the last token.")
    streamed = JSONBooleanField(required=False, default=False)
    cache_hit = JSONBooleanField(required=False, default=False)
    fallback_attempt = JSONIntegerField(
        min_value=0, max_value=_INT16_MAX, required=False, default=0
    )
    service_tier = _text("service_tier")
    run_id = _text("run_id")
    parent_run_id = _text("parent_run_id")
    metadata = MetadataField(
        required=False,
        default=dict,
        help_text=f"A JSON object of at most {MAX_METADATA_BYTES} bytes.",
    )
    tags = serializers.ListField(
        child=TextField(max_length=MAX_TAG_LENGTH),
        max_length=MAX_TAGS,
        required=False,
        default=list,
    )

    def validate_created_at(self, value: dt.datetime) -> dt.datetime:
        if value > timezone.now() + MAX_CLOCK_SKEW:
            raise serializers.ValidationError("Must not be in the future.")
        if value < MIN_CREATED_AT:
            raise serializers.ValidationError("Must not be before 2000-01-01.")
        return value

    def validate_metadata(self, value: Any) -> dict[str, Any]:
        try:
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            size = len(encoded.encode())
        except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
            raise serializers.ValidationError(f"Not storable as JSON: {exc}") from exc
        if size > MAX_METADATA_BYTES:
            raise serializers.ValidationError(
                f"Too large: {size} bytes as JSON; at most {MAX_METADATA_BYTES}."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        text = _TEXT_FIELDS  # (its text fields: null is stored as "")
        for name, value in attrs.items():
            if value is None and name in text:
                attrs[name] = ""  # (a value replaced: the iteration goes on)
        return attrs


#: The text fields (``CharField``) of :class:`EventIngestSerializer`.
_TEXT_FIELDS = frozenset(
    name
    for name, field in EventIngestSerializer().fields.items()
    if isinstance(field, serializers.CharField)
)


class EventBatchSerializer(serializers.Serializer):
    """Several events, stored all together or not at all."""

    events = EventIngestSerializer(many=True, min_length=1, max_length=MAX_BATCH_SIZE)


class IngestedEventSerializer(serializers.Serializer):
    """What became of one posted event (in the order they were posted)."""

    tracking_id = serializers.UUIDField(help_text="The event's id (generated if not given).")
    duplicate = serializers.BooleanField(
        help_text="True: not stored by this request, because an event with this tracking_id "
        "was already stored, or came earlier in this batch (with the same payload). "
        "False: stored by this request."
    )
    cost_usd = _money("The cost stored (null: not priced, or a duplicate).")
    cost_source = serializers.CharField(
        help_text="Where the stored cost comes from (client, a price source, unknown...); "
        "empty for a duplicate."
    )
    counts_towards_budgets = serializers.BooleanField(
        help_text="True: the stored cost counts towards the team's budgets (an event "
        "priced by the server, or a cost given with a key that may charge budgets). "
        "False: a duplicate, or a cost given by the client with a key without "
        "may_charge_budgets (stored and reported, not counted towards budgets)."
    )


#: How the answer writes a cost: as its ``cost_usd`` field does (a decimal string).
_MONEY_OUT = serializers.DecimalField(**COST_FIELD, coerce_to_string=True)
_MONEY_EXPONENT = Decimal(1).scaleb(-COST_FIELD["decimal_places"])
_MONEY_CONTEXT = decimal.Context(
    prec=COST_FIELD["max_digits"], rounding=_MONEY_OUT.rounding or decimal.ROUND_HALF_EVEN
)


def _money_text(value: Decimal) -> str:
    """``_MONEY_OUT.to_representation(value)`` for a ``Decimal``, without its per-call
    context copy (a batch answers up to 1000 costs)."""
    return f"{value.quantize(_MONEY_EXPONENT, context=_MONEY_CONTEXT):f}"


class IngestResultSerializer(serializers.Serializer):
    """What ``POST events/`` answers (202): every posted event is either stored or a
    duplicate (``accepted + duplicates`` is the number posted)."""

    accepted = serializers.IntegerField(help_text="Events stored by this request.")
    duplicates = serializers.IntegerField(
        help_text="Events not stored: their tracking_id was already stored, or repeated "
        "in this batch."
    )
    events = IngestedEventSerializer(many=True)

    def to_representation(self, instance: Any) -> dict[str, Any]:
        """What DRF's fields make of :func:`ingest`'s result, without their per-field
        machinery (a batch answers up to 1000 events, and binding the nested fields
        alone deep-copies them per answer); a test compares the two."""
        money = _money_text
        return {
            "accepted": int(instance["accepted"]),
            "duplicates": int(instance["duplicates"]),
            "events": [
                {
                    "tracking_id": str(e["tracking_id"]),
                    "duplicate": bool(e["duplicate"]),
                    "cost_usd": None if e["cost_usd"] is None else money(e["cost_usd"]),
                    "cost_source": str(e["cost_source"]),
                    "counts_towards_budgets": bool(e["counts_towards_budgets"]),
                }
                for e in instance["events"]
            ],
        }


def check_json_strings(value: Any) -> None:
    """Refuse what databases can't store in JSON: NUL characters (PostgreSQL) and nesting
    deeper than ``MAX_METADATA_DEPTH``. Iterative, so deep input can't exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise serializers.ValidationError(
                f"Nested too deeply (at most {MAX_METADATA_DEPTH} levels)."
            )
        if isinstance(item, str):
            if "\x00" in item:
                raise serializers.ValidationError("Null characters are not allowed.")
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _team_value(value: Any, context: Any) -> Any:
    """``TeamReferenceField``, compiled: the key's own team, else the serializer decides."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FALLBACK
    team: Team = context["team"]
    if value in ("", team.slug, team.pk, str(team.pk)):
        return team
    raise FALLBACK


#: ``validate_metadata``'s encoding (``json.dumps`` with these options makes one per call).
_METADATA_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _metadata_value(value: Any, context: Any) -> Any:
    """``MetadataField`` and ``validate_metadata``, compiled: one JSON encoding for both.

    An object holding no object or list (the common metadata) is no deeper than the
    limit, and its NUL characters are in its encoding (as ``\\u0000``: refused, or an
    escaped backslash before ``u0000``: then the serializer decides); any other is
    walked by ``check_json_strings``."""
    if type(value) is not dict:
        raise FALLBACK
    for child in value.values():
        if isinstance(child, (dict, list)):
            check_json_strings(value)
            break
    try:
        encoded = _METADATA_JSON.encode(value)
        # (UnicodeEncodeError, a ValueError: a lone surrogate)
        size = len(encoded) if encoded.isascii() else len(encoded.encode())
    except (ValueError, TypeError):
        raise FALLBACK from None
    if size > MAX_METADATA_BYTES or "\\u0000" in encoded:
        raise FALLBACK
    return value


#: :class:`EventIngestSerializer` as plain functions (``None``: the serializer decides).
validate_event = compile_serializer(
    EventIngestSerializer, overrides={"team": _team_value, "metadata": _metadata_value}
)


def _event_errors(item: Any, context: dict[str, Any]) -> Any:
    """The serializer's answer for one batch item: its validated data, or raises its
    errors as ``ValidationError`` (as ``EventBatchSerializer`` gives them per index)."""
    return EventIngestSerializer(context=context).run_validation(item)


class IngestEvents(list[dict[str, Any]]):
    """The validated events of one request; ``batch``: posted as ``{"events": [...]}``
    (errors are then keyed by the event's index)."""

    batch = False


def parse_ingest_body(data: Any, team: Team) -> IngestEvents:
    """The validated events of a request body (one event or ``{"events": [...]}``).

    Raises ``ValidationError`` with per-item errors keyed by index for a batch. An event
    repeating the ``tracking_id`` of an earlier one of the batch is refused unless it is
    the same event (it is then returned again, and :func:`ingest` counts it a duplicate).
    """
    context = {"team": team}
    if isinstance(data, dict) and "events" in data:
        items = data["events"]
        if type(items) is not list or not 1 <= len(items) <= MAX_BATCH_SIZE:
            batch = EventBatchSerializer(data=data, context=context)
            batch.is_valid()  # (invalid: the list itself is)
            raise serializers.ValidationError(batch.errors)
        events = IngestEvents()
        events.batch = True
        errors: dict[str, Any] = {}
        first_of: dict[uuid.UUID, tuple[int, dict[str, Any]]] = {}
        for index, item in enumerate(items):
            event = validate_event(item, context)
            if event is None:
                try:
                    event = _event_errors(item, context)
                except serializers.ValidationError as exc:
                    errors[str(index)] = exc.detail
                    continue
            tracking_id = event.get("tracking_id")
            if tracking_id is not None:
                first, first_event = first_of.setdefault(tracking_id, (index, event))
                if first != index and event != first_event:
                    errors[str(index)] = {
                        "tracking_id": [
                            f"Repeats the tracking_id of event {first} with a different "
                            "payload: each event needs its own tracking_id."
                        ]
                    }
                    continue
            events.append(event)
        if errors:
            raise serializers.ValidationError({"events": errors})
        return events
    if not isinstance(data, dict):
        raise serializers.ValidationError(
            {"non_field_errors": ['Expected one event object or {"events": [...]}.']}
        )
    event = validate_event(data, context)
    if event is None:
        single = EventIngestSerializer(data=data, context=context)
        single.is_valid(raise_exception=True)
        event = dict(single.validated_data)
    return IngestEvents([event])


_STATUS_OF = {s.value: s for s in Status}


#: The metadata an event notes when its client-supplied cost does not count towards budgets.
_NOT_CHARGED = {BUDGET_CHARGED_KEY: "0"}


def to_records(
    events: Sequence[dict[str, Any]],
    team: Team,
    received_at: dt.datetime | None = None,
    *,
    charge_client_costs: bool = False,
) -> list[EventRecord]:
    """The ``EventRecord`` of each validated event of ``team`` (not priced yet), each
    carrying the charge of its cost to the team's budgets that applied when it was made:
    one :func:`~fluxgate_django.builder.make_records` batch.

    ``received_at``: the ``created_at`` of an event that gives none (default: now). The
    budget charges are looked up once per feature and time (events of one batch mostly
    share both). ``charge_client_costs``: whether a cost the client gave counts towards
    the budgets (the key's ``may_charge_budgets``); if not, the event carries no charge
    and notes ``BUDGET_CHARGED_KEY`` = 0."""
    received_at = received_at or now()
    charges: dict[tuple[str, dt.datetime], dict[str, Any] | None] = {}
    team_id = team.pk
    client, usage_missing = CostSource.CLIENT.value, CostSource.USAGE_MISSING.value
    rows = []
    for data in events:
        # The validated fields are named as make_records' row keys (provider, model,
        # the token counts, feature, metadata, latency_ms...; the others are ignored): a
        # copy of the event, with what the API's fields mean for make_record on top.
        row = data.copy()
        cost = data.get("cost_usd")
        reason = data["cost_source"]
        status = data["status"]
        row["status"] = _STATUS_OF[status]
        # Priced here unless the client gave the cost, or said why there is none.
        row["usage_reported"] = bool(cost is not None or (not reason and data["usage_reported"]))
        row["usage_missing_reason"] = reason or usage_missing
        row["cost_source"] = (reason or client) if cost is not None else ""
        # A failed call that reported no tokens is "not-billed", as for tracked clients.
        row["failed"] = status in FAILED_STATUSES
        if data["end_user_id"] or data["end_user_email"]:
            row["user"] = {"id": data["end_user_id"], "email": data["end_user_email"]}
        created_at = row["created_at"] = data.get("created_at") or received_at
        metadata = data.get("metadata") or {}
        if BUDGET_CHARGED_KEY in metadata:  # (FluxGate's note, never the client's)
            row["metadata"] = {k: v for k, v in metadata.items() if k != BUDGET_CHARGED_KEY}
        if cost is not None and not charge_client_costs:
            row["extra_metadata"] = _NOT_CHARGED
            row["budget_reservation"] = None
            rows.append(row)
            continue
        key = (data["feature"], created_at)
        try:
            charge = charges[key]
        except KeyError:
            charge = charges[key] = charge_ingested(team_id, data["feature"], created_at)
        # (Each record its own: what the recorder notes on one must not reach another.)
        row["budget_reservation"] = None if charge is None else dict(charge)
        rows.append(row)
    return make_records(rows, team=team, created_at=received_at)


def ingest(
    events: Sequence[dict[str, Any]], team: Team, *, charge_client_costs: bool = False
) -> dict[str, Any]:
    """Record validated ``events`` of ``team``; returns the ``IngestResultSerializer`` data.

    Events whose ``tracking_id`` is already stored (or repeated in the batch) are skipped
    and counted as duplicates; the others go through the pipeline like every other event
    (priced, recorded by the site's recorder, their cost charged to the team's budgets
    when they are written — a cost the client gave only with ``charge_client_costs``:
    the API key's ``may_charge_budgets``).
    """
    records = to_records(events, team, charge_client_costs=charge_client_costs)
    batch = getattr(events, "batch", len(records) > 1)
    stored = stored_tracking_ids([r.tracking_id for r in records])
    new: list[EventRecord] = []
    results = []
    errors: dict[str, Any] = {}
    for index, record in enumerate(records):
        duplicate = record.tracking_id in stored
        stored.add(record.tracking_id)
        if not duplicate:
            new.append(finish_record(record))
            if REFUSED_KEY in record.metadata:
                refused = _unstorable_price(record)
                if refused:
                    errors[str(index)] = refused
        results.append(
            {
                "tracking_id": record.tracking_id,
                "duplicate": duplicate,
                "cost_usd": None if duplicate else record.cost_usd,
                "cost_source": "" if duplicate else record.cost_source,
                "counts_towards_budgets": not duplicate
                and BUDGET_CHARGED_KEY not in record.metadata,
            }
        )
    if errors:  # a price no column or counter holds (an absurd ModelPrice): nothing stored
        raise serializers.ValidationError({"events": errors} if batch else errors["0"])
    submit_batch(new)
    return {"accepted": len(new), "duplicates": len(records) - len(new), "events": results}


def stored_tracking_ids(ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` are stored already: one query, as plain SQL (the ORM would cost
    more than the query itself on a single-event request)."""
    if not ids:
        return set()
    field = Event._meta.get_field("tracking_id")
    conn = connections[router.db_for_read(Event)]
    table = conn.ops.quote_name(Event._meta.db_table)
    column = conn.ops.quote_name(str(field.column))
    if conn.vendor == "postgresql":
        conn.ensure_connection()  # (psycopg 3, or psycopg2: then Django's cursor below)
    if psycopg is not None and isinstance(conn.connection, psycopg.Connection):
        # One array parameter, server-side binding (psycopg's own cursor, which prepares a
        # statement run often unless the site's prepare_threshold says not to): no query
        # text to build, nor to plan on every request. (Django's query logging does not
        # see it.) The array is given as its text ("{hex,hex...}", which the uuid type
        # reads): one string, not one adapted value per id.
        hexes = [i.hex if i.__class__ is uuid.UUID else field.to_python(i).hex for i in ids]
        array = "{" + ",".join(hexes) + "}"
        sql = f"SELECT {column} FROM {table} WHERE {column} = ANY(%s::uuid[])"
        with conn.wrap_database_errors, psycopg.Cursor(conn.connection) as cursor:
            cursor.execute(sql, [array])  # (prepared after a few: psycopg)
            return {field.to_python(row[0]) for row in cursor.fetchall()}
    params = [field.get_db_prep_value(i, conn) for i in ids]
    sql = f"SELECT {column} FROM {table} WHERE {column} IN ({', '.join(['%s'] * len(params))})"
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return {field.to_python(row[0]) for row in cursor.fetchall()}


def _unstorable_price(record: EventRecord) -> dict[str, list[str]]:
    """Field errors for costs priced here that the columns or budget counters can't hold
    (pricing refused them: see ``builder.refuse_unstorable_price``)."""
    refused = record.metadata.get(REFUSED_KEY) or {}
    return {
        name: [
            f"From its tokens ({record.provider}/{record.model}) it is {refused[name]} (USD); "
            "send the cost, or fix the model's price."
        ]
        for name in ("cost_usd", "cost_saved_usd")
        if name in refused
    }


def accept_chunked_body(request: HttpRequest) -> None:
    """Make a chunked request body (``Transfer-Encoding: chunked``, no ``Content-Length``)
    readable by DRF, which takes a request without ``Content-Length`` as empty.

    The server has already decoded the chunks: a WSGI server that says so
    (``wsgi.input_terminated``: gunicorn, uWSGI) gives the body as ``wsgi.input`` read to
    its end; an ASGI request's stream is the whole body. The body is read up to one byte
    over ``DATA_UPLOAD_MAX_MEMORY_SIZE``, so the parser still answers 413 for a larger one.
    A WSGI server that can't decode chunks (wsgiref: ``runserver``) leaves the body empty.
    """
    meta = request.META
    if (
        meta.get("CONTENT_LENGTH")
        or "chunked" not in meta.get("HTTP_TRANSFER_ENCODING", "").lower()
    ):
        return
    if "wsgi.input" in meta:
        if not meta.get("wsgi.input_terminated"):
            return
        stream: Any = meta["wsgi.input"]
    else:
        stream = getattr(request, "_stream", None)
        if stream is None:
            return
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = stream.read() if limit is None else stream.read(limit + 1)
    request._stream = io.BytesIO(body)  # type: ignore[attr-defined]
    meta["CONTENT_LENGTH"] = str(len(body))
