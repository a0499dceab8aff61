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
:func:`charge_ingested` the same way, with a reservation of 0 — those priced by FluxGate
always, those whose client gave the cost only when the API key has
``may_charge_budgets`` (:mod:`fluxgate_django.api.ingest` decides).

When the guard cannot decide — the database is unreachable, or the guard itself fails
(a bug: any exception that is not a refusal) — ``FLUXGATE["BUDGET_FAIL_OPEN"]`` decides,
one path for both (:func:`_cannot_check`): False (the default) refuses the call with
:class:`~fluxgate_django.exceptions.BudgetStoreUnavailable`, True lets it through. Each
cause (exception type and message) is logged once per :data:`LOG_REPEATS_AFTER` seconds,
not once per call. ``RAISE_ERRORS`` does not change that decision: under tests a guard
bug is still loud by default, as the refusal whose ``__cause__`` it is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections
from django.utils import timezone

from . import alerts, counters, ledger, runaway, teams
from .conf import fluxgate_settings
from .context import Deferred, TrackingContext
from .errors import capture_internal_exceptions
from .estimate import calibration, estimate_cost, output_tokens_bound
from .exceptions import BudgetExceeded, BudgetStoreUnavailable, CallRefused
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
    #: The call's bound before calibration (what its real cost is compared with).
    bound_units: int = 0

    def as_record_field(self) -> dict[str, Any]:
        """What the call's event carries (``make_record(budget_reservation=...)``), so that
        the recorder settles it with the event's real cost, atomically."""
        self.released = True
        return {
            "counters": self.counters,
            "estimate_units": self.estimate_units,
            "bound_units": self.bound_units,
        }

    def settle(self, cost: Decimal | None) -> None:
        """Settle now (for callers that record no event): charge ``cost``, free the rest."""
        if not self.released:
            self.released = True
            charge = to_units(cost) if cost is not None else 0
            changes = {c: (self.estimate_units, charge) for c in self.counters}
            counters.outside_callers_transaction(lambda: counters.settle_counters(changes))

    def release(self) -> None:
        """The call failed and was not billed: free the reservation."""
        self.settle(None)


#: The name this had before (kept for code that imported it).
BudgetGuard = Reservation


def might_apply(ctx: TrackingContext) -> bool:
    """Cheap, in memory: could a budget apply to a call in ``ctx``? (False: skip the check.)

    If the answer can't be worked out (a bug), True: :func:`check_budget` then decides,
    under ``BUDGET_FAIL_OPEN``."""
    try:
        return _might_apply(ctx)
    except Exception as exc:
        _log_once(exc, "checking whether a budget applies", internal=True)
        return True


def _might_apply(ctx: TrackingContext) -> bool:
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
    input_tokens: int,
    max_output_tokens: int | None,
    choices: int = 1,
    source: Source = Source.SDK,
    operation: str = "",
    record_fields: dict[str, Any] | None = None,
) -> Reservation | None:
    """Reserve what a call may cost on every budget that applies: ``input_tokens`` (the
    request's bound: ``estimate.input_tokens_bound``) and ``max_output_tokens`` (the
    call's cap, or None) times ``choices``, at the model's price
    (:func:`fluxgate_django.estimate.output_tokens_bound`), scaled up where this model's
    calls have cost more than their bound (``estimate.calibration``).

    ``record_fields`` are ``make_record`` keywords for the ``BUDGET_EXCEEDED`` event of a
    refused call (e.g. LangChain's ``run_id`` / ``parent_run_id``).

    Returns None when no budget applies. Raises :class:`BudgetExceeded` (after recording
    a ``BUDGET_EXCEEDED`` event) when a blocking budget would be exceeded, and
    :class:`BudgetStoreUnavailable` when the budget can't be checked — the database
    can't be asked, or the guard itself failed — unless ``BUDGET_FAIL_OPEN``.
    """
    refusal = _Refusal(ctx, provider, model, source, operation, record_fields)
    try:
        checked = _checked_reserve(refusal, (input_tokens, max_output_tokens, choices))
    except CallRefused:
        raise  # the budget (or a runaway block) said no
    except (DatabaseError, InterfaceError) as exc:
        counters.discard_broken_connections(exc)
        _cannot_check(refusal, exc, internal=False)
        return None
    except Exception as exc:  # the guard's own failure: not a reason to skip budgets
        _cannot_check(refusal, exc, internal=True)
        return None
    if checked is None:
        return None
    budgets, ids, (units, bound), reserved = checked
    if len(reserved) == len(ids):
        return Reservation(ids, units, bound_units=bound)
    failed = [(b, c) for b, c in zip(budgets, ids, strict=True) if c not in reserved]
    _reject(refusal, failed[0][0], failed[0][1], units, reserved)
    return None  # pragma: no cover - _reject always raises


def _checked_reserve(
    refusal: _Refusal, size: tuple[int, int | None, int]
) -> tuple[list[ledger.BudgetInfo], list[int], tuple[int, int], set[int]] | None:
    """:func:`_reserve`, asked once more on a new connection if the one it met was broken."""
    alias = counters.counters_alias()
    try:
        # (A connection that stops answering is shut, not waited on forever.)
        with stalls.watch(alias):
            return _reserve(refusal, size)
    except (DatabaseError, InterfaceError) as exc:
        # The next statement must not meet the same dead connection: a long-lived
        # process has no request cycle to discard it. If one was open (it may just
        # be stale: the server restarted), ask once more on a new one.
        if not counters.discard_broken_connections(exc):
            raise
        with stalls.watch(alias):
            return _reserve(refusal, size)


def _cannot_check(refusal: _Refusal, exc: Exception, *, internal: bool) -> None:
    """The budget could not be checked (``exc``: the database unreachable, or — with
    ``internal`` — the guard's own failure): ``BUDGET_FAIL_OPEN`` decides. Returns (no
    reservation: the call goes ahead) or raises :class:`BudgetStoreUnavailable`."""
    ctx = refusal.ctx
    try:
        known, team_id = _known_without_budget(ctx)
        if known:  # no reason to refuse a team that has no budget
            if team_id is not None:
                _check_runaway_block(refusal, team_id)  # (kept in the cache)
            return
    except CallRefused:
        raise
    except Exception:  # (in memory; if even this fails, the setting decides)
        pass
    fail_open = _fail_open()
    what = "the guard failed" if internal else "the budget store is unreachable"
    _log_once(
        exc,
        f"checking the budget ({what})",
        internal=internal,
        decision="the call was allowed (BUDGET_FAIL_OPEN)" if fail_open else "the call was refused",
    )
    if fail_open:
        return
    reason = (
        f"of an internal error ({type(exc).__name__})"
        if internal
        else "the database is unreachable"
    )
    raise BudgetStoreUnavailable(
        f"FluxGate could not check the team's budget because {reason}; the call was "
        "blocked. Set FLUXGATE['BUDGET_FAIL_OPEN'] = True to allow calls when the budget "
        "store is down.",
        team=ctx.team,
    ) from exc


def _fail_open() -> bool:
    try:
        return bool(fluxgate_settings.BUDGET_FAIL_OPEN)
    except Exception:  # unreadable settings: the default
        return False


#: A cause (exception type and message) is logged again after this many seconds at the
#: earliest, with the number of times it recurred meanwhile.
LOG_REPEATS_AFTER = 300.0


class _OncePerCause:
    """Log each cause of a failed budget check once per :data:`LOG_REPEATS_AFTER` seconds:
    a broken guard or a database outage fails every call, and one line per call would
    bury the log. Holds at most ``max_causes`` causes (the oldest are forgotten)."""

    max_causes = 256

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], list[float]] = {}  # cause: [logged at, repeats]

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()

    def due(self, cause: tuple[str, str]) -> int | None:
        """None if ``cause`` was logged less than LOG_REPEATS_AFTER ago (counted), else
        how often it recurred since it was last logged."""
        now = time.monotonic()
        with self.lock:
            entry = self.seen.get(cause)
            if entry is not None and now - entry[0] < LOG_REPEATS_AFTER:
                entry[1] += 1
                return None
            self.seen.pop(cause, None)
            if len(self.seen) >= self.max_causes:
                del self.seen[next(iter(self.seen))]
            self.seen[cause] = [now, 0]
            return int(entry[1]) if entry is not None else 0


_logged = _OncePerCause()


def _cause(exc: BaseException) -> tuple[str, str]:
    """``(type, message)`` of an exception, the message on one line and at most 300
    characters. (The guard handles no prompt text and no key: a message can't hold them.)"""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    message = " ".join(str(exc).split())
    return name, message[:300] + ("..." if len(message) > 300 else "")


def _log_once(exc: BaseException, what: str, *, internal: bool, decision: str = "") -> None:
    """Log the cause of a failure once per cause and LOG_REPEATS_AFTER seconds: an
    internal error as an error with its traceback, an outage as a warning."""
    cause = _cause(exc)
    repeats = _logged.due(cause)
    if repeats is None:
        return
    again = f" (again; {repeats} more times since last logged)" if repeats else ""
    if internal:
        logger.error(
            "FluxGate internal error while %s: %s: %s; %s%s",
            what,
            *cause,
            decision or "ignored",
            again,
            exc_info=exc,
        )
    else:
        logger.warning("FluxGate: %s: %s: %s; %s%s", what, *cause, decision, again)


def _reserve(
    refusal: _Refusal, size: tuple[int, int | None, int]
) -> tuple[list[ledger.BudgetInfo], list[int], tuple[int, int], set[int]] | None:
    """The database half of :func:`check_budget`: ``(budgets, counters, (units, bound
    units), counters that took the reservation)``, or None when no budget applies."""
    ctx = refusal.ctx
    team_id = teams.team_id_of(ctx.team)
    if team_id is None:
        return None
    _check_runaway_block(refusal, team_id)
    budgets = ledger.applicable_budgets(team_id, ctx.feature)
    if not budgets:
        return None
    ledger.settler.wait()  # this process's previous calls' real costs first
    provider, model = refusal.provider, refusal.model
    input_tokens, cap, choices = size
    output_tokens = output_tokens_bound(provider, model, cap, input_tokens, choices)
    estimate = estimate_cost(provider, model, input_tokens, output_tokens)
    bound = to_units(estimate) if estimate is not None else 0
    units = math.ceil(bound * calibration.scale(provider, model))

    def reserve() -> tuple[list[int], set[int], int]:
        ids = ledger.counter_ids(budgets)
        return ids, *counters.reserve(ids, units, bound)  # (maybe scaled up: bound_scale)

    ids, taken, units = counters.outside_callers_transaction(reserve)
    return budgets, ids, (units, bound), taken


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


def _reject(
    refusal: _Refusal,
    budget: ledger.BudgetInfo,
    counter_id: int,
    units: int,
    reserved: set[int],
) -> None:
    """Refuse the call (a blocking budget's counter did not take its reservation): free
    what the other counters took, record the refusal, raise :class:`BudgetExceeded`.
    The budget has said no, so a failure in this bookkeeping still refuses the call."""
    from .models import SpendCounter

    team = refusal.ctx.team
    if isinstance(team, Deferred) and team.ready():  # (the middleware's: its slug, no I/O)
        team = team.resolve()
    scope = f"team {team!r}{' feature ' + repr(budget.feature) if budget.feature else ''}"
    try:
        if reserved:
            freed = {c: (units, 0) for c in reserved}
            counters.outside_callers_transaction(lambda: counters.settle_counters(freed))
        counter = SpendCounter.objects.select_related("budget").get(id=counter_id)
    except Exception as exc:
        _log_once(exc, "refusing a call over its budget", internal=True, decision="refused")
        message = f"Budget exceeded for {scope}: its limit per {budget.period} would be passed."
        refusal.record(message, budget)
        raise BudgetExceeded(message, team=team) from exc
    limit, spent = counter.limit, counter.spent
    window = (counter.window_start, window_end(budget.period, counter.window_start))
    message = (
        f"Budget exceeded for {scope}: "
        f"${spent} spent + ${counter.reserved} in flight of ${limit} per {budget.period}; "
        f"this call needs ~${from_units(units)}."
    )
    refusal.record(message, budget)
    with capture_internal_exceptions("raising a budget alert"):
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
    site_zone = timezone.get_default_timezone()
    message = (
        f"Runaway spend detected for team {refusal.ctx.team!r}"
        f"{' feature ' + repr(feature) if feature else ''}: calls are blocked until "
        f"{timezone.localtime(until, site_zone):%Y-%m-%d %H:%M:%S %Z}."
    )
    refusal.record(message, None)
    if not settings.USE_TZ:  # the window as the site's other datetimes: naive, local
        until = timezone.make_naive(until, site_zone)
    raise BudgetExceeded(message, team=refusal.ctx.team, window=(timezone.now(), until))


def charge_ingested(team_id: int, feature: str, created_at: Any) -> dict[str, Any] | None:
    """The reservation an ingested event carries (``make_record(budget_reservation=...)``)
    so that the recorder charges its cost to the budgets that applied when it was made:
    a reservation of 0 on the counters of the event's window. None: no budget applies.
    (Not asked for an event whose client-supplied cost may not charge budgets.)"""
    budgets = ledger.applicable_budgets(team_id, feature)
    if not budgets:
        return None
    return {"counters": ledger.counter_ids(budgets, now=created_at), "estimate_units": 0}
