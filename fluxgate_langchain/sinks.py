"""Where a handler's events go: the Django app's pipeline, a remote FluxGate site, or nowhere.

The choice is made at the first event, not at import, so that a handler created before
``django.setup()`` still records in-process:

* ``api_key=`` / ``base_url=`` given to the handler → :class:`RemoteSink` (explicit wins);
* Django configured, apps ready and ``fluxgate_django`` installed → :class:`DjangoSink`:
  events are priced and recorded by the app's own pipeline, and budgets are enforced;
* else ``FLUXGATE_URL`` and ``FLUXGATE_API_KEY`` set → :class:`RemoteSink`;
* else :class:`NullSink`: a warning (once) says events cannot be sent and how to fix it.

Every sink builds its events with the core's one record builder
(:func:`fluxgate_django.builder.make_record`, Django-free), so an event sent to a remote
site says exactly what the same event recorded in-process says.

Nothing here waits on an event loop: in async runs the budget check is awaited off the
loop (:meth:`Sink.abegin`), recording only hands the event to the recorder (or the remote
sender's queue), and a reservation to free is handed to a helper thread.
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
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from .remote import RemoteSender, get_sender

if TYPE_CHECKING:
    from fluxgate_django.records import CallInfo, EventRecord, Usage

    from .runs import LLMRun

logger = logging.getLogger("fluxgate.langchain")

T = TypeVar("T")

#: ``EventRecord`` fields that mean something only in the process that made the event.
_LOCAL_FIELDS = ("budget_reservation", "user_pk", "content")


class Sink(abc.ABC):
    """Records finished runs. Subclasses say whether the choice is final for a handler."""

    final = True
    #: Does the destination price the usage it is sent (a remote site), rather than take
    #: a cost made here (:meth:`upper_cost`)?
    priced_at_destination = False

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

    def begin(  # noqa: B027 - a hook: by default nothing happens before a call
        self, run: LLMRun, messages: Any, params: dict[str, Any], *, enforce_budgets: bool
    ) -> None:
        """Before the model is called (sync runs): reserve the run's estimated cost on the
        budgets that apply (Django only); raises ``CallRefused`` to stop the call."""

    async def abegin(  # noqa: B027
        self, run: LLMRun, messages: Any, params: dict[str, Any], *, enforce_budgets: bool
    ) -> None:
        """:meth:`begin` for async runs: nothing in it may block the event loop."""

    def release(self, run: LLMRun) -> None:  # noqa: B027
        """The run ends without an event: free what :meth:`begin` reserved."""

    def upper_cost(self, run: LLMRun, info: CallInfo, usage: Usage) -> Decimal | None:
        """What the run costs with ``usage``, the most it may have had (None: not known
        here; a remote site is not asked)."""
        return None

    @abc.abstractmethod
    def record(self, run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> None:
        """Persist one finished LLM run as an event (``fields``: ``make_record`` keywords).
        Never waits for I/O."""


def run_record(run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> EventRecord:
    """The run's event, made by the core's one record builder."""
    from fluxgate_django import builder
    from fluxgate_django.records import Source

    return builder.make_record(
        info,
        usage,
        run.ctx,
        source=Source.LANGCHAIN,
        tracking_id=run.tracking_id,
        **run.record_fields(),
        **fields,
    )


class DjangoSink(Sink):
    """In-process: the app's pricing, recorder and budgets, exactly as for SDK clients."""

    def stores_content(self) -> bool:
        from fluxgate_django.conf import fluxgate_settings

        return bool(fluxgate_settings.STORE_CONTENT)

    def guard(self, what: str) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        from fluxgate_django.errors import capture_internal_exceptions

        return capture_internal_exceptions(what)

    def begin(
        self, run: LLMRun, messages: Any, params: dict[str, Any], *, enforce_budgets: bool
    ) -> None:
        from fluxgate_django import guard

        if not enforce_budgets or not guard.might_apply(run.ctx):  # in memory, no query
            return
        with _refusals_only("reserving budget"):
            # Sync code on a thread that runs an event loop (a sync invoke() in a notebook)
            # may not query the database there: the check goes to a helper thread.
            run.reservation = run_off_event_loop(
                lambda: guard.check_budget(
                    run.ctx,
                    run.provider,
                    run.requested_model,
                    **_budget_args(run, messages, params),
                )
            )

    async def abegin(
        self, run: LLMRun, messages: Any, params: dict[str, Any], *, enforce_budgets: bool
    ) -> None:
        from fluxgate_django import guard

        if enforce_budgets and guard.might_apply(run.ctx):
            with _refusals_only("reserving budget"):
                run.reservation = await guard.acheck_budget(
                    run.ctx,
                    run.provider,
                    run.requested_model,
                    **_budget_args(run, messages, params),
                )
            return
        with _refusals_only("looking up the run's team"):
            await guard.aresolve_context(run.ctx)

    def upper_cost(self, run: LLMRun, info: CallInfo, usage: Usage) -> Decimal | None:
        """``usage`` priced as the run's event would be (the one pipeline's pricing)."""
        import dataclasses

        from fluxgate_django.pipeline import price_record

        priced = dataclasses.replace(info, usage_reported=True, reported_cost=None)
        with self.guard("pricing a LangChain run's bound"):
            return price_record(run_record(run, priced, usage)).cost_usd
        return None

    def release(self, run: LLMRun) -> None:
        reservation = run.reservation
        if reservation is not None and not reservation.released:
            hand_off(reservation.release)

    def record(self, run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> None:
        from fluxgate_django.pipeline import submit

        reservation = run.reservation
        held = None
        if reservation is not None and not reservation.released:
            held = reservation.as_record_field()  # settled by the recorder with the cost
        try:
            record = run_record(run, info, usage, budget_reservation=held, **fields)
        except BaseException:
            if held is not None:
                reservation.released = False  # no event will carry it: free it here
                hand_off(reservation.release)
            raise
        submit(record)  # prices it; the recorder never waits on a loop


def _budget_args(run: LLMRun, messages: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``check_budget`` keywords for a run about to call its model."""
    from fluxgate_django.estimate import choices, input_tokens_bound, max_output_tokens
    from fluxgate_django.records import Source

    texts = [[getattr(m, "content", m) for m in batch] for batch in messages or ()]
    # The messages, and what the model is called with beside them (bound tools, a
    # response format...).
    request = {**params, "messages": texts}
    return {
        "input_tokens": input_tokens_bound(request, run.provider, run.requested_model),
        "max_output_tokens": max_output_tokens(params, run.operation),
        "choices": choices(params),
        "source": Source.LANGCHAIN,
        "operation": run.operation,
        "record_fields": run.record_fields(),  # the refused run's place in its graph
    }


@contextlib.contextmanager
def _refusals_only(what: str) -> Iterator[None]:
    """Let a deliberate refusal (``CallRefused``: a budget, an unreachable budget store)
    out of the hook, the one exception a FluxGate hook raises on purpose; any other error
    is FluxGate's own and is logged (raised with ``RAISE_ERRORS``)."""
    from fluxgate_django.errors import capture_internal_exceptions
    from fluxgate_django.exceptions import CallRefused

    try:
        yield
    except CallRefused:
        raise
    except Exception:
        with capture_internal_exceptions(what):
            raise


class RemoteSink(Sink):
    """Outside Django: events go, unpriced, to a FluxGate site that prices and stores them.

    Each event is ``EventRecord.to_json()`` without the fields that mean something only
    in-process (``budget_reservation``, ``user_pk``, ``content``), plus ``usage_reported``;
    ``cost_usd`` is null and ``cost_source`` empty for the site to price it, or
    ``cost_source`` says why it can't be priced (``usage-missing``...).
    """

    priced_at_destination = True

    def __init__(self, sender: RemoteSender) -> None:
        self.sender = sender

    def record(self, run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> None:
        self.sender.send(remote_event(run, info, usage, **fields))


def remote_event(run: LLMRun, info: CallInfo, usage: Usage | None, **fields: Any) -> dict[str, Any]:
    """The JSON the ingest API takes for one run (the site prices it)."""
    # Aware UTC: the site's own clock settings say nothing about this process's.
    now = dt.datetime.now(dt.timezone.utc)
    record = run_record(run, info, usage, created_at=now, **fields)
    event = record.to_json()
    for name in _LOCAL_FIELDS:
        event.pop(name, None)
    team = record.team
    if team is not None and not isinstance(team, (str, int)):
        event["team"] = getattr(team, "slug", None) or event.get("team")  # ids are per site
    event["usage_reported"] = info.usage_reported
    return event


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


# -- database work from sync hooks ---------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _helper() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fluxgate-lc")
    return _executor


def run_off_event_loop(func: Callable[[], T]) -> T:
    """Run ``func`` (database work) here, or — when sync code runs on a thread that runs an
    event loop, where Django forbids database I/O — in a helper thread, waiting for it
    (that sync code blocks its loop anyway). Async runs never come here: they await
    :func:`fluxgate_django.guard.acheck_budget`."""
    if not _loop_running():
        return func()
    ctx = contextvars.copy_context()
    return _helper().submit(ctx.run, _with_fresh_connection, func).result()


def hand_off(func: Callable[[], object]) -> None:
    """Run ``func`` (database work nobody waits for) here, or — on a thread that runs an
    event loop — in a helper thread, without waiting for it."""
    if not _loop_running():
        func()
        return
    ctx = contextvars.copy_context()
    future = _helper().submit(ctx.run, _with_fresh_connection, func)
    future.add_done_callback(_log_failure)


def _log_failure(future: Any) -> None:
    error = future.exception()
    if error is not None:
        logger.error("FluxGate: freeing a budget reservation failed", exc_info=error)


def _with_fresh_connection(func: Callable[[], T]) -> T:
    from django.db import close_old_connections

    close_old_connections()
    try:
        return func()
    finally:
        close_old_connections()
