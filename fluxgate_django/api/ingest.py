"""``POST events/``: validate posted events, price them, and record them through the pipeline.

A request carries one event object or ``{"events": [...]}`` (what
``fluxgate_langchain``'s remote sender posts: ``EventRecord.to_json()`` plus
``cache_write_1h_tokens`` and ``usage_reported``). A batch is all-or-nothing: every item
is validated first, and one bad item is a 400 with its errors under its index, and
nothing of the batch is stored.

An event's team is the API key's team; a payload naming another team is refused. An
event without ``cost_usd`` is priced here by the same code as every other event
(:func:`fluxgate_django.pipeline.build_record`), unless its ``cost_source`` says why it
can't be (``usage-missing``, ``not-billed``...). Events are stored by
:func:`fluxgate_django.recording.write_events`, idempotently by ``tracking_id``, and
charged to the team's budgets like any other event.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..context import TrackingContext
from ..models import COST_FIELD, Event, Team
from ..pipeline import build_record, redact_secrets
from ..records import CallInfo, EventRecord, Source, Status, Usage

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

_INT32_MAX = 2_147_483_647  # PositiveIntegerField on every database
_INT16_MAX = 32_767  # PositiveSmallIntegerField
_MAX_DURATION_MS = 1e10  # ~115 days
#: Sources a client may claim; SDK and service events are recorded in-process only.
INGEST_SOURCES = (Source.API.value, Source.LANGCHAIN.value)
STATUSES = tuple(s.value for s in Status)


def _column_length(name: str) -> int | None:
    return getattr(Event._meta.get_field(name), "max_length", None)


def _text(name: str, **kwargs: Any) -> serializers.CharField:
    """An optional text field bounded like the ``Event`` column it is stored in."""
    return serializers.CharField(
        max_length=kwargs.pop("max_length", None) or _column_length(name),
        required=False,
        allow_blank=True,
        allow_null=True,
        default="",
        **kwargs,
    )


def _tokens(help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=0, max_value=_INT32_MAX, required=False, default=0, help_text=help_text
    )


def _duration(help_text: str) -> serializers.FloatField:
    return serializers.FloatField(
        min_value=0,
        max_value=_MAX_DURATION_MS,
        required=False,
        allow_null=True,
        help_text=help_text,
    )


def _money(help_text: str) -> serializers.DecimalField:
    return serializers.DecimalField(
        **COST_FIELD,
        min_value=0,
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

    tracking_id = serializers.UUIDField(
        required=False,
        help_text="Unique id of the call; an event already stored with it is skipped. "
        "Generated when absent (then a retry would store the event twice).",
    )
    created_at = serializers.DateTimeField(required=False, help_text="Default: now.")
    provider = serializers.CharField(max_length=_column_length("provider"))
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
    usage_reported = serializers.BooleanField(
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
    streamed = serializers.BooleanField(required=False, default=False)
    cache_hit = serializers.BooleanField(required=False, default=False)
    fallback_attempt = serializers.IntegerField(
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
        child=serializers.CharField(max_length=MAX_TAG_LENGTH),
        max_length=MAX_TAGS,
        required=False,
        default=list,
    )

    def validate_created_at(self, value: dt.datetime) -> dt.datetime:
        if value > timezone.now() + MAX_CLOCK_SKEW:
            raise serializers.ValidationError("Must not be in the future.")
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
        for name, value in list(attrs.items()):
            if value is None and isinstance(self.fields[name], serializers.CharField):
                attrs[name] = ""
        return attrs


class EventBatchSerializer(serializers.Serializer):
    """Several events, stored all together or not at all."""

    events = EventIngestSerializer(many=True, min_length=1, max_length=MAX_BATCH_SIZE)


class IngestedEventSerializer(serializers.Serializer):
    tracking_id = serializers.UUIDField()
    duplicate = serializers.BooleanField(help_text="Already stored: skipped.")
    cost_usd = _money("The cost stored (null: not priced).")
    cost_source = serializers.CharField()


class IngestResultSerializer(serializers.Serializer):
    """What ``POST events/`` answers (202)."""

    accepted = serializers.IntegerField(help_text="Events stored by this request.")
    duplicates = serializers.IntegerField(help_text="Events skipped: already stored.")
    events = IngestedEventSerializer(many=True)


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


def parse_ingest_body(data: Any, team: Team) -> list[dict[str, Any]]:
    """The validated events of a request body (one event or ``{"events": [...]}``).

    Raises ``ValidationError`` with per-item errors keyed by index for a batch.
    """
    context = {"team": team}
    if isinstance(data, dict) and "events" in data:
        batch = EventBatchSerializer(data=data, context=context)
        if not batch.is_valid():
            errors = batch.errors.get("events")
            if isinstance(errors, list) and any(isinstance(e, dict) for e in errors):
                raise serializers.ValidationError(
                    {"events": {str(i): e for i, e in enumerate(errors) if e}}
                )
            raise serializers.ValidationError(batch.errors)
        return list(batch.validated_data["events"])
    if not isinstance(data, dict):
        raise serializers.ValidationError(
            {"non_field_errors": ['Expected one event object or {"events": [...]}.']}
        )
    single = EventIngestSerializer(data=data, context=context)
    single.is_valid(raise_exception=True)
    return [single.validated_data]


def to_record(data: dict[str, Any], team: Team) -> EventRecord:
    """A priced ``EventRecord`` of one validated event of ``team``."""
    usage = Usage(
        input_tokens=data["input_tokens"],
        output_tokens=data["output_tokens"],
        reasoning_tokens=data["reasoning_tokens"],
        cache_read_tokens=data["cache_read_tokens"],
        cache_write_tokens=data["cache_write_tokens"],
        cache_write_1h_tokens=data["cache_write_1h_tokens"],
    )
    cost = data.get("cost_usd")
    reason = data["cost_source"]
    status = Status(data["status"])
    # Priced here unless the client gave the cost, or said why there is none.
    priced_here = cost is None and not reason and data["usage_reported"]
    info = CallInfo(
        provider=data["provider"],
        operation=data["operation"],
        requested_model=data["requested_model"],
        model=data["model"],
        finish_reason=data["finish_reason"],
        status=status,
        streamed=data["streamed"],
        service_tier=data["service_tier"],
        usage_reported=priced_here,
        usage_missing_reason=reason or "usage-missing",
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
    failed = status in (Status.ERROR, Status.MALFORMED_REQUEST)
    record = build_record(
        info,
        usage,
        ctx,
        latency_ms=data.get("latency_ms"),
        source=Source(data["source"]),
        tracking_id=data.get("tracking_id") or uuid.uuid4(),
        time_to_first_token_ms=data.get("time_to_first_token_ms"),
        stream_duration_ms=data.get("stream_duration_ms"),
        # A failed call that reported no tokens is "not-billed", as for tracked clients.
        error=_ReportedError() if failed else None,
    )
    if cost is not None:
        record.cost_usd, record.cost_source = cost, reason or "client"
    record.created_at = data.get("created_at") or record.created_at
    record.error_type = data["error_type"]
    record.error_message = redact_secrets(data["error_message"])
    if data.get("cost_saved_usd") is not None or cost is not None:
        # The client's own figures; otherwise the saving priced here (cache reads).
        record.cost_saved_usd = data.get("cost_saved_usd")
    record.cache_hit = data["cache_hit"]
    record.fallback_attempt = data["fallback_attempt"]
    record.run_id = data["run_id"]
    record.parent_run_id = data["parent_run_id"]
    return record


class _ReportedError(Exception):
    """Stands for the error a client reported, so pricing treats the call as failed."""


def ingest(events: Sequence[dict[str, Any]], team: Team) -> dict[str, Any]:
    """Record validated ``events`` of ``team``; returns the ``IngestResultSerializer`` data.

    Events whose ``tracking_id`` is already stored (or repeated in the batch) are skipped
    and counted as duplicates; the others are written in one transaction and charged to
    the team's budgets.
    """
    from ..recording import write_events

    records = [to_record(data, team) for data in events]
    stored = set(
        Event.objects.filter(tracking_id__in=[r.tracking_id for r in records]).values_list(
            "tracking_id", flat=True
        )
    )
    new: list[EventRecord] = []
    results = []
    for record in records:
        duplicate = record.tracking_id in stored
        stored.add(record.tracking_id)
        if not duplicate:
            new.append(record)
        results.append(
            {
                "tracking_id": record.tracking_id,
                "duplicate": duplicate,
                "cost_usd": None if duplicate else record.cost_usd,
                "cost_source": "" if duplicate else record.cost_source,
            }
        )
    _charge_budgets(new, team)
    write_events(new)
    return {"accepted": len(new), "duplicates": len(records) - len(new), "events": results}


def _charge_budgets(records: Sequence[EventRecord], team: Team) -> None:
    """Have the recorder charge each priced event to the budgets that apply to it.

    In-process calls reserve before the call and settle after; an ingested event was made
    elsewhere, so it carries a reservation of 0 on the counters of its window and the
    recorder settles it with the event's cost, in the transaction that stores the event.
    """
    from ..budgets import applicable_budgets, counter_ids

    for record in records:
        if not record.cost_usd:
            continue
        budgets = applicable_budgets(team.pk, record.feature)
        if budgets:
            counters = counter_ids(budgets, now=record.created_at)
            record.budget_reservation = {"counters": counters, "estimate_units": 0}
