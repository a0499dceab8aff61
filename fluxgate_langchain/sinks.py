"""Where a handler's events go: the Django app's pipeline, a remote FluxGate site, or nowhere.

The choice is made at the first event, not at import, so that a handler created before
``django.setup()`` still records in-process:

* ``api_key=`` / ``base_url=`` given to the handler → :class:`RemoteSink` (explicit wins);
* Django configured, apps ready and ``fluxgate_django`` installed → :class:`DjangoSink`:
  events are priced and recorded by the app's own pipeline, and budgets are enforced;
* else ``FLUXGATE_URL`` and ``FLUXGATE_API_KEY`` set → :class:`RemoteSink`;
* else :class:`NullSink`: a warning (once) says events cannot be sent and how to fix it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from .remote import RemoteSender, get_sender

if TYPE_CHECKING:
    from fluxgate_django.records import CallInfo, Usage

    from .handler import LLMRun

logger = logging.getLogger("fluxgate.langchain")

T = TypeVar("T")


class Sink(abc.ABC):
    """Records finished runs. Subclasses say whether the choice is final for a handler."""

    final = True
    enforces_budgets = False

    def stores_content(self) -> bool:
        """Keep prompts and completions on events (``FLUXGATE["STORE_CONTENT"]``)?"""
        return False

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """FluxGate's own errors are logged, never raised into the LangChain run."""
        try:
            yield
        except Exception:
            logger.exception("FluxGate internal error while %s (the run is unaffected)", what)

    def reserve(self, run: LLMRun, messages: Any, params: dict[str, Any]) -> None:  # noqa: B027
        """Reserve the run's estimated cost on the budgets that apply (Django only; by
        default nothing is enforced)."""

    @abc.abstractmethod
    def record(self, run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> None:
        """Persist one finished LLM run as an event."""


class DjangoSink(Sink):
    """In-process: the app's pricing, recorder and budgets, exactly as for SDK clients."""

    enforces_budgets = True

    def stores_content(self) -> bool:
        from fluxgate_django.conf import fluxgate_settings

        return bool(fluxgate_settings.STORE_CONTENT)

    def guard(self, what: str) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        from fluxgate_django.errors import capture_internal_exceptions

        return capture_internal_exceptions(what)

    def reserve(self, run: LLMRun, messages: Any, params: dict[str, Any]) -> None:
        from fluxgate_django.budgets import (
            check_budget,
            max_output_tokens,
            might_apply,
            prompt_chars,
        )
        from fluxgate_django.errors import capture_internal_exceptions
        from fluxgate_django.exceptions import BudgetExceeded
        from fluxgate_django.records import Source

        if not might_apply(run.ctx):  # in memory: no budget can apply, no round trip
            return
        texts = [[getattr(m, "content", m) for m in batch] for batch in messages or ()]
        try:
            run.guard = run_off_event_loop(
                lambda: check_budget(
                    run.ctx,
                    run.provider,
                    run.requested_model,
                    prompt_chars=prompt_chars({"messages": texts}),
                    max_output_tokens=max_output_tokens(params, run.operation),
                    source=Source.LANGCHAIN,
                    operation=run.operation,
                    record_fields={
                        "run_id": str(run.run_id),
                        "parent_run_id": str(run.parent_run_id or ""),
                    },
                )
            )
        except BudgetExceeded:
            raise  # the one exception a FluxGate hook raises on purpose
        except Exception:
            with capture_internal_exceptions("reserving budget"):
                raise

    def record(self, run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> None:
        from fluxgate_django.pipeline import build_record, submit
        from fluxgate_django.records import Source

        guard = run.guard
        try:
            record = build_record(info, usage, run.ctx, source=Source.LANGCHAIN, **fields)
            record.run_id = str(run.run_id)
            record.parent_run_id = str(run.parent_run_id or "")
            if guard is not None:
                guard.attach(record)  # settled by the recorder with the event's cost
        except BaseException:
            if guard is not None and not guard.released:
                run_off_event_loop(guard.release)
            raise
        submit(record)


class RemoteSink(Sink):
    """Outside Django: events go, unpriced, to a FluxGate site that prices and stores them.

    Each event is ``EventRecord.to_json()`` plus ``cache_write_1h_tokens`` and
    ``usage_reported``; ``cost_usd`` is null and ``cost_source`` empty for the site to
    price it, or ``cost_source`` says why it can't be priced (``usage-missing``...).
    """

    def __init__(self, sender: RemoteSender) -> None:
        self.sender = sender

    def record(self, run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> None:
        self.sender.send(remote_event(run, info, usage, **fields))


class NullSink(Sink):
    """No Django app and no remote site: say so (once) instead of dropping events silently."""

    final = False  # Django may still be set up later in the process
    _warned = False
    not_sent = 0

    def record(self, run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> None:
        NullSink.not_sent += 1
        if not NullSink._warned:
            NullSink._warned = True
            logger.warning(
                "FluxGate: LangChain events cannot be recorded: Django is not configured with "
                "'fluxgate_django' in INSTALLED_APPS, and no FluxGate site is set. Set "
                "FLUXGATE_URL and FLUXGATE_API_KEY (or pass FluxGateHandler(base_url=..., "
                "api_key=...)) to send them to a FluxGate site."
            )
        logger.debug("FluxGate: LangChain event not recorded (no destination): run %s", run.run_id)


_django_sink = DjangoSink()
_null_sink = NullSink()


def select_sink(api_key: str | None, base_url: str | None) -> Sink:
    if api_key or base_url:
        return RemoteSink(get_sender(*remote_settings(api_key, base_url)))
    if django_ready():
        return _django_sink
    url, key = os.environ.get("FLUXGATE_URL"), os.environ.get("FLUXGATE_API_KEY")
    if url and key:
        return RemoteSink(get_sender(url, key))
    return _null_sink


def remote_settings(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    """``(base_url, api_key)`` from the arguments, else the environment."""
    url = base_url or os.environ.get("FLUXGATE_URL")
    key = api_key or os.environ.get("FLUXGATE_API_KEY")
    if not url or not key:
        missing = "base_url= (or FLUXGATE_URL)" if not url else "api_key= (or FLUXGATE_API_KEY)"
        raise ValueError(f"FluxGateHandler: sending events to a FluxGate site needs {missing}")
    return url, key


def django_ready() -> bool:
    """Is this a Django process with the FluxGate app set up? (Never imports Django.)"""
    if "django.conf" not in sys.modules:
        return False
    try:
        from django.apps import apps
        from django.conf import settings

        return bool(settings.configured and apps.ready and apps.is_installed("fluxgate_django"))
    except Exception:
        return False


def remote_event(
    run: LLMRun,
    info: CallInfo,
    usage: Usage | None,
    *,
    latency_ms: float | None,
    time_to_first_token_ms: float | None = None,
    stream_duration_ms: float | None = None,
    error: BaseException | None = None,
    error_type: str = "",
    extra_metadata: dict[str, Any] | None = None,
    content: Any = None,
) -> dict[str, Any]:
    """The JSON the ingest API takes for one run (the site prices it)."""
    from fluxgate_django.pipeline import redact_secrets
    from fluxgate_django.records import EventRecord, Source, Usage

    ctx = run.ctx
    usage = usage or Usage()
    if not info.usage_reported:
        cost_source = info.usage_missing_reason
    elif error is not None and usage.total_tokens == 0:
        cost_source = "not-billed"
    else:
        cost_source = ""  # priced by the site
    end_user_id, email = _user_fields(ctx.user)
    team = ctx.team
    if team is not None and not isinstance(team, (str, int)):
        team = getattr(team, "slug", None) or getattr(team, "pk", None)
    record = EventRecord(
        tracking_id=run.tracking_id,
        created_at=dt.datetime.now(dt.timezone.utc),
        provider=info.provider,
        model=info.model or info.requested_model,
        requested_model=info.requested_model,
        operation=info.operation,
        status=info.status.value,
        source=Source.LANGCHAIN.value,
        team=team,
        end_user_id=end_user_id,
        end_user_email=email,
        session_id=ctx.session_id or "",
        conversation_id=ctx.conversation_id or "",
        request_id=ctx.request_id or "",
        feature=ctx.feature or "",
        step=ctx.step or "",
        finish_reason=info.finish_reason,
        error_type=error_type or (type(error).__name__ if error is not None else ""),
        error_message=redact_secrets(str(error)[:2000]) if error is not None else "",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_source=cost_source,
        latency_ms=latency_ms,
        time_to_first_token_ms=time_to_first_token_ms,
        stream_duration_ms=stream_duration_ms,
        streamed=info.streamed,
        service_tier=ctx.service_tier or info.service_tier,
        run_id=str(run.run_id),
        parent_run_id=str(run.parent_run_id or ""),
        metadata={**ctx.metadata, **(extra_metadata or {})},
        tags=list(ctx.tags),
    )
    event = record.to_json()
    event.pop("budget_reservation", None)
    event.pop("user_pk", None)
    event.pop("content", None)
    event["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    event["usage_reported"] = info.usage_reported
    return event


def _user_fields(user: Any) -> tuple[str, str]:
    if user is None:
        return "", ""
    if isinstance(user, dict):
        return str(user.get("id") or ""), str(user.get("email") or "")
    return str(getattr(user, "pk", user)), str(getattr(user, "email", "") or "")


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def run_off_event_loop(func: Callable[[], T]) -> T:
    """Run ``func`` (database work) here, or — when this thread runs an event loop, where
    Django forbids database I/O — in a helper thread, waiting for it. Only the budget
    reservation (one round trip, and only when a budget may apply) goes this way."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return func()
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fluxgate-lc")
    ctx = contextvars.copy_context()
    return _executor.submit(ctx.run, _with_fresh_connection, func).result()


def _with_fresh_connection(func: Callable[[], T]) -> T:
    from django.db import close_old_connections

    close_old_connections()
    try:
        return func()
    finally:
        close_old_connections()
