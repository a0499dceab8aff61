"""The budget guard: estimate, check and reserve before a call; refuse it if it can't fit.

Every path that makes a call — tracked SDK clients, the LangChain handler, the LLM
service — asks :func:`might_apply` (in memory, no query) and then :func:`check_budget`,
which reserves the call's estimated cost on every budget that applies (the team's own,
plus those scoped to the call's feature, for the current day and month) with one
statement (see :mod:`fluxgate_django.ledger`). A call that would exceed a blocking budget
is recorded as a ``BUDGET_EXCEEDED`` event and refused with
:class:`~fluxgate_django.BudgetExceeded` before any provider request is sent. The
reservation travels on the call's event (``make_record(budget_reservation=...)``) and is
settled with the real cost when the event is submitted, at the end of the call (see
:mod:`fluxgate_django.ledger`). Ingested events (made elsewhere) are charged by
:func:`charge_ingested` the same way, with a reservation of 0.
"""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, close_old_connections
from django.utils import timezone

from . import alerts, ledger, runaway, teams
from .conf import fluxgate_settings
from .context import Deferred, TrackingContext
from .errors import capture_internal_exceptions
from .estimate import estimate_cost
from .exceptions import BudgetExceeded, BudgetStoreUnavailable
from .money import from_units, to_units
from .periods import window_end
from .pipeline import make_record, submit
from .recording import stalls
from .records import CallInfo, Source, Status

logger = logging.getLogger("fluxgate.budgets")


@dataclasses.dataclass(slots=True)
class Reservation:
    """A reservation held on budget counters for one call."""

    counters: list[int]
    estimate_units: int
    released: bool = False

    def as_record_field(self) -> dict[str, Any]:
        """What the call's event carries (``make_record(budget_reservation=...)``), so that
        the recorder settles it with the event's real cost, atomically."""
        self.released = True
        return {"counters": self.counters, "estimate_units": self.estimate_units}

    def settle(self, cost: Decimal | None) -> None:
        """Settle now (for callers that record no event): charge ``cost``, free the rest."""
        if not self.released:
            self.released = True
            charge = to_units(cost) if cost is not None else 0
            ledger.settle_counters({c: (self.estimate_units, charge) for c in self.counters})

    def release(self) -> None:
        """The call failed and was not billed: free the reservation."""
        self.settle(None)


#: The name this had before (kept for code that imported it).
BudgetGuard = Reservation


def might_apply(ctx: TrackingContext) -> bool:
    """Cheap, in memory: could a budget apply to a call in ``ctx``? (False: skip the check.)"""
    if ctx.team is None:
        return False
    known, team_id = teams.cached_team_id(ctx.team)
    if not known:
        return True
    if team_id is None:
        return False
    budgets = ledger.cached_budgets(team_id)
    if budgets is None:
        return True
    return any(not b.feature or b.feature == ctx.feature for b in budgets) or _blocking_runaway()


def _blocking_runaway() -> bool:
    runaway = fluxgate_settings.RUNAWAY_DETECTION
    return bool(runaway.get("enabled")) and bool(runaway.get("block_minutes"))


def check_budget(
    ctx: TrackingContext,
    provider: str,
    model: str,
    *,
    prompt_chars: int,
    max_output_tokens: int | None,
    source: Source = Source.SDK,
    operation: str = "",
    record_fields: dict[str, Any] | None = None,
) -> Reservation | None:
    """Reserve the estimated cost of a call on every budget that applies.

    ``record_fields`` are ``make_record`` keywords for the ``BUDGET_EXCEEDED`` event of a
    refused call (e.g. LangChain's ``run_id`` / ``parent_run_id``).

    Returns None when no budget applies. Raises :class:`BudgetExceeded` (after recording
    a ``BUDGET_EXCEEDED`` event) when a blocking budget would be exceeded, and
    :class:`BudgetStoreUnavailable` when the database can't be asked (unless
    ``BUDGET_FAIL_OPEN``).
    """
    refusal = _Refusal(ctx, provider, model, source, operation, record_fields)
    alias = ledger.counters_alias()
    try:
        try:
            # (A connection that stops answering is shut, not waited on forever.)
            with stalls.watch(alias):
                checked = _reserve(refusal, prompt_chars, max_output_tokens)
        except (DatabaseError, InterfaceError) as exc:
            # The next statement must not meet the same dead connection: a long-lived
            # process has no request cycle to discard it. If one was open (it may just
            # be stale: the server restarted), ask once more on a new one.
            if not ledger.discard_broken_connections(exc):
                raise
            with stalls.watch(alias):
                checked = _reserve(refusal, prompt_chars, max_output_tokens)
    except (DatabaseError, InterfaceError) as exc:
        ledger.discard_broken_connections(exc)
        known, team_id = _known_without_budget(ctx)
        if known:  # an outage is no reason to refuse a team that has no budget
            if team_id is not None:
                _check_runaway_block(refusal, team_id)  # (kept in the cache)
            return None
        if fluxgate_settings.BUDGET_FAIL_OPEN:
            logger.warning("FluxGate budget store unreachable; allowing the call (fail open)")
            return None
        raise BudgetStoreUnavailable(
            "FluxGate could not check the team's budget because the database is unreachable; "
            "the call was blocked. Set FLUXGATE['BUDGET_FAIL_OPEN'] = True to allow calls "
            "when the budget store is down.",
            team=ctx.team,
        ) from exc
    if checked is None:
        return None
    budgets, ids, units, reserved = checked
    if len(reserved) == len(ids):
        return Reservation(ids, units)
    if reserved:
        ledger.settle_counters({c: (units, 0) for c in reserved})
    failed = [(b, c) for b, c in zip(budgets, ids, strict=True) if c not in reserved]
    _reject(refusal, failed[0][0], failed[0][1], units)
    return None  # pragma: no cover - _reject always raises


def _reserve(
    refusal: _Refusal, prompt_chars: int, max_output_tokens: int | None
) -> tuple[list[ledger.BudgetInfo], list[int], int, set[int]] | None:
    """The database half of :func:`check_budget`: ``(budgets, counters, units, counters
    that took the reservation)``, or None when no budget applies."""
    ctx = refusal.ctx
    team_id = teams.team_id_of(ctx.team)
    if team_id is None:
        return None
    _check_runaway_block(refusal, team_id)
    budgets = ledger.applicable_budgets(team_id, ctx.feature)
    if not budgets:
        return None
    ledger.settler.wait()  # this process's previous calls' real costs first
    out_tokens = (
        max_output_tokens
        if max_output_tokens is not None
        else int(fluxgate_settings.BUDGET_DEFAULT_OUTPUT_TOKENS)
    )
    estimate = estimate_cost(refusal.provider, refusal.model, prompt_chars, out_tokens)
    units = to_units(estimate) if estimate is not None else 0
    ids = ledger.counter_ids(budgets)
    return budgets, ids, units, ledger.reserve(ids, units)


def _known_without_budget(ctx: TrackingContext) -> tuple[bool, int | None]:
    """In memory, however old the answers: whether the call's team was last seen with no
    budget for its feature (or as no team at all), and its id. For when the database
    can't be asked."""
    known, team_id = teams.last_known_team_id(ctx.team)
    if not known or team_id is None:
        return known, None
    budgets = ledger.last_known_budgets(team_id)
    if budgets is None or any(not b.feature or b.feature == ctx.feature for b in budgets):
        return False, team_id
    return True, team_id


async def aresolve_context(ctx: TrackingContext) -> None:
    """Look up, off the event loop, the context values an event needs from the database
    (the middleware's lazy user and team), so that recording it does no query on the loop.
    Nothing to do (no thread hop) once they are known."""
    pending = [v for v in (ctx.user, ctx.team) if isinstance(v, Deferred) and not v.ready()]
    if not pending:
        return

    def in_worker() -> None:
        close_old_connections()
        try:
            for value in pending:
                value.resolve()
        finally:
            close_old_connections()

    await sync_to_async(in_worker, thread_sensitive=False)()


async def acheck_budget(ctx: TrackingContext, provider: str, model: str, **kwargs: Any) -> Any:
    """:func:`check_budget` from async code: its database round trip must not run on the
    event loop, so it runs in a worker thread that closes its connection as a request
    would (``CONN_MAX_AGE``)."""

    def in_worker() -> Reservation | None:
        close_old_connections()
        try:
            for value in (ctx.user, ctx.team):  # what the event will need, looked up here
                if isinstance(value, Deferred):
                    with capture_internal_exceptions("looking up the call's context"):
                        value.resolve()
            return check_budget(ctx, provider, model, **kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(in_worker, thread_sensitive=False)()


@dataclasses.dataclass(slots=True)
class _Refusal:
    """What the ``BUDGET_EXCEEDED`` event of a refused call is made of."""

    ctx: TrackingContext
    provider: str
    model: str
    source: Source
    operation: str
    record_fields: dict[str, Any] | None

    def record(self, message: str, budget: ledger.BudgetInfo | None) -> None:
        with capture_internal_exceptions("recording a blocked call"):
            info = CallInfo(
                provider=self.provider,
                operation=self.operation,
                requested_model=self.model,
                status=Status.BUDGET_EXCEEDED,
            )
            submit(
                make_record(
                    info,
                    None,
                    self.ctx,
                    latency_ms=0.0,
                    source=self.source,
                    error_type="BudgetExceeded",
                    error_message=message,
                    extra_metadata={"budget_id": budget.id} if budget else None,
                    **(self.record_fields or {}),
                )
            )


def _reject(refusal: _Refusal, budget: ledger.BudgetInfo, counter_id: int, units: int) -> None:
    from .models import SpendCounter

    counter = SpendCounter.objects.select_related("budget").get(id=counter_id)
    limit, spent = counter.limit, counter.spent
    window = (counter.window_start, window_end(budget.period, counter.window_start))
    team = refusal.ctx.team
    message = (
        f"Budget exceeded for team {team!r}"
        f"{' feature ' + repr(budget.feature) if budget.feature else ''}: "
        f"${spent} spent + ${counter.reserved} in flight of ${limit} per {budget.period}; "
        f"this call needs ~${from_units(units)}."
    )
    refusal.record(message, budget)
    alerts.raise_alert(counter.budget, counter, 100, kind="blocked")
    raise BudgetExceeded(
        message, team=team, budget=counter.budget, limit=limit, spent=spent, window=window
    )


def _check_runaway_block(refusal: _Refusal, team_id: int) -> None:
    if not _blocking_runaway():
        return
    feature = refusal.ctx.feature
    until = runaway.blocked_until(team_id, feature or "")
    if until is None:
        return
    message = (
        f"Runaway spend detected for team {refusal.ctx.team!r}"
        f"{' feature ' + repr(feature) if feature else ''}: calls are blocked until "
        f"{until:%Y-%m-%d %H:%M:%S %Z}."
    )
    refusal.record(message, None)
    raise BudgetExceeded(message, team=refusal.ctx.team, window=(timezone.now(), until))


def charge_ingested(team_id: int, feature: str, created_at: Any) -> dict[str, Any] | None:
    """The reservation an ingested event carries (``make_record(budget_reservation=...)``)
    so that the recorder charges its cost to the budgets that applied when it was made:
    a reservation of 0 on the counters of the event's window. None: no budget applies."""
    budgets = ledger.applicable_budgets(team_id, feature)
    if not budgets:
        return None
    return {"counters": ledger.counter_ids(budgets, now=created_at), "estimate_units": 0}
