"""The one pipeline: observed call → priced ``EventRecord`` → recorder.

Tracked SDK clients, the LangChain handler, the LLM service and the ingest API all end
here, so an event means the same thing whichever way it arrived.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from contextvars import ContextVar
from decimal import Decimal
from typing import Any

from django.utils import timezone

from .conf import fluxgate_settings
from .context import TrackingContext
from .pricing import calculate_cost
from .records import CallInfo, EventRecord, Source, Status, Usage


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceAttempt:
    """Set by the LLM service around one provider attempt, for the event it produces."""

    source: Source
    fallback_attempt: int


#: The LLM service's current attempt (None outside the service).
service_attempt: ContextVar[ServiceAttempt | None] = ContextVar(
    "fluxgate_service_attempt", default=None
)

#: Bounded lengths of the Event text columns, so a long value never fails a whole batch.
_MAX_ERROR_MESSAGE = 2000


def user_fields(user: Any) -> tuple[Any, str, str]:
    """``(django_user_pk, end_user_id, email)`` from a context ``user`` value."""
    if user is None:
        return None, "", ""
    if isinstance(user, dict):
        return user.get("pk"), str(user.get("id") or ""), str(user.get("email") or "")
    if hasattr(user, "_meta") and hasattr(user, "pk"):  # a Django user instance
        return user.pk, str(user.pk), str(getattr(user, "email", "") or "")
    return None, str(user), ""


def build_record(
    info: CallInfo,
    usage: Usage | None,
    ctx: TrackingContext,
    *,
    latency_ms: float | None,
    source: Source = Source.SDK,
    tracking_id: uuid.UUID | None = None,
    time_to_first_token_ms: float | None = None,
    stream_duration_ms: float | None = None,
    error: BaseException | None = None,
    error_type: str = "",
    content: Any = None,
    extra_metadata: dict[str, Any] | None = None,
    attempt: ServiceAttempt | None = None,
) -> EventRecord:
    """Price one observed call and turn it into an ``EventRecord``.

    ``attempt`` is the LLM-service attempt the call belongs to (default: the current one).
    """
    usage = usage or Usage()
    saved = None
    if attempt is None:
        attempt = service_attempt.get()
    if attempt is not None:
        source = attempt.source
    service_tier = ctx.service_tier or info.service_tier
    if info.status is Status.BUDGET_EXCEEDED:
        cost, cost_source = Decimal(0), "not-sent"
    elif ctx.openrouter_cost is not None:
        cost, cost_source = ctx.openrouter_cost, "openrouter"
    elif info.reported_cost is not None:
        cost, cost_source = info.reported_cost, f"{info.provider}-reported"
    elif not info.usage_reported:
        cost, cost_source = None, info.usage_missing_reason
    elif error is not None and usage.total_tokens == 0:
        # A failed call that reported no usage was not billed.
        cost, cost_source = None, "not-billed"
    else:
        priced = calculate_cost(
            info.provider,
            info.model,
            usage,
            requested_model=info.requested_model,
            service_tier=service_tier,
        )
        cost, cost_source, saved = priced.usd, priced.source, priced.saved
    user_pk, end_user_id, email = user_fields(ctx.user)
    metadata = dict(ctx.metadata)
    if extra_metadata:
        metadata.update(extra_metadata)
    return EventRecord(
        tracking_id=tracking_id or uuid.uuid4(),
        created_at=timezone.now(),
        provider=info.provider,
        model=info.model or info.requested_model,
        requested_model=info.requested_model,
        operation=info.operation,
        status=info.status.value,
        source=source.value,
        team=ctx.team,
        user_pk=user_pk,
        end_user_id=end_user_id,
        end_user_email=email,
        session_id=ctx.session_id or "",
        conversation_id=ctx.conversation_id or "",
        request_id=ctx.request_id or "",
        feature=ctx.feature or "",
        step=ctx.step or "",
        finish_reason=info.finish_reason or "",
        error_type=error_type or (type(error).__name__ if error is not None else ""),
        error_message=_error_message(error),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_usd=cost,
        cost_source=cost_source,
        cost_saved_usd=saved,
        latency_ms=latency_ms,
        time_to_first_token_ms=time_to_first_token_ms,
        stream_duration_ms=stream_duration_ms,
        streamed=info.streamed,
        service_tier=service_tier or "",
        metadata=metadata,
        tags=list(ctx.tags),
        content=content if fluxgate_settings.STORE_CONTENT else None,
        fallback_attempt=attempt.fallback_attempt if attempt is not None else 0,
    )


_SECRET = re.compile(r"\b(sk-ant-|sk-|fg_live_|AIza)[A-Za-z0-9_\-]{6,}")


def redact_secrets(text: str) -> str:
    """Mask anything shaped like a provider or FluxGate API key."""
    return _SECRET.sub(lambda m: m.group(1) + "***", text)


def _error_message(error: BaseException | None) -> str:
    if error is None:
        return ""
    # SDK errors carry the provider's error text (never request headers or prompts); a
    # provider may still echo part of a key back ("Incorrect API key provided: sk-...").
    return redact_secrets(str(error)[:_MAX_ERROR_MESSAGE])


def submit(record: EventRecord) -> None:
    """Hand a record to the configured recorder (never raises into the caller)."""
    from .errors import capture_internal_exceptions
    from .recording import get_recorder

    with capture_internal_exceptions("recording"):
        get_recorder().record(record)
