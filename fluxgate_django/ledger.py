"""The budget ledger: which counters apply to a call, and when a reservation is settled.

Each budget has one ``SpendCounter`` per window (day or month); the statements on them
(reserve, settle exactly once, adjust) are in :mod:`.counters`. A reservation travels on
the call's event and is settled (reserved -= bound, spent += real cost) at the end of the
call (:data:`settler`, from the pipeline), so spend is current within one call whatever
the recorder. A reservation that could not be settled then (the database was
unreachable, the connection was cut during its ``COMMIT``, an ingested event) is settled
by the recorder in the transaction that stores its event (:func:`settle_batch`, a write
hook); the settlement token makes that count once even if the first one did commit.
Either way a budget's spend equals the sum of its stored events' costs; ``reconcile``
rebuilds it from them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from django.db import (
    DatabaseError,
    InterfaceError,
)
from django.db.models import Sum

from .conf import fluxgate_settings, on_reload
from .counters import (
    charge,
    counters_alias,
    forget_tokens,
    in_ledger_thread,
    outside_callers_transaction,
    settle_counters,
    settle_once,
    settlement_for,
)
from .money import from_units, to_units
from .periods import window_bounds, window_start
from .records import EventRecord

logger = logging.getLogger("fluxgate.budgets")


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetInfo:
    """What a reservation needs to know of a ``Budget`` row (cached per process)."""

    id: int
    team_id: int
    feature: str
    period: str
    limit_units: int
    blocking: bool
    threshold: int


class _BudgetCache:
    """Teams' budget lists and counter ids per window, for BUDGET_CACHE_SECONDS.

    A budget saved or deleted in this process clears it at once (signals); other
    processes' edits are seen after at most BUDGET_CACHE_SECONDS.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self.budgets: dict[int, tuple[float, tuple[BudgetInfo, ...]]] = {}
        self.counters: dict[tuple[int, dt.date], int] = {}

    @staticmethod
    def fresh(loaded_at: float) -> bool:
        return time.monotonic() - loaded_at < fluxgate_settings.BUDGET_CACHE_SECONDS


_cache = _BudgetCache()
on_reload(_cache.clear)


def clear_cache() -> None:
    """Forget cached budgets (after editing budgets outside the ORM, and in tests)."""
    _cache.clear()


def cached_budgets(team_id: int) -> tuple[BudgetInfo, ...] | None:
    """The team's budgets if cached and fresh (no query), else None."""
    cached = _cache.budgets.get(team_id)
    if cached is None or not _cache.fresh(cached[0]):
        return None
    return cached[1]


def last_known_budgets(team_id: int) -> tuple[BudgetInfo, ...] | None:
    """The team's budgets as last loaded, however old (None: never loaded here). For
    when the database can't be asked: a team last seen without budgets has none."""
    cached = _cache.budgets.get(team_id)
    return None if cached is None else cached[1]


def budgets_for_team(team_id: int) -> tuple[BudgetInfo, ...]:
    cached = cached_budgets(team_id)
    if cached is not None:
        return cached
    from .models import Budget

    infos = tuple(
        BudgetInfo(
            id=b.id,
            team_id=b.team_id,
            feature=b.feature,
            period=b.period,
            limit_units=to_units(b.limit_usd),
            blocking=b.action == Budget.Action.BLOCK,
            threshold=b.alert_threshold_percent,
        )
        for b in Budget.objects.filter(team_id=team_id)
    )
    _cache.budgets[team_id] = (time.monotonic(), infos)
    return infos


def applicable_budgets(team_id: int, feature: str | None) -> list[BudgetInfo]:
    """The team-wide budgets plus those scoped to ``feature``."""
    return [b for b in budgets_for_team(team_id) if not b.feature or b.feature == feature]


def counter_ids(budgets: Iterable[BudgetInfo], now: dt.datetime | None = None) -> list[int]:
    """The ``SpendCounter`` ids of these budgets' windows at ``now`` (created when missing)."""
    from .models import SpendCounter

    wanted = [(b, window_start(b.period, now)) for b in budgets]
    missing = [(b, start) for b, start in wanted if (b.id, start) not in _cache.counters]
    if missing:
        # (Read back where they were written: a replica may not have them yet.)
        counters = SpendCounter.objects.db_manager(counters_alias())
        counters.bulk_create(
            [
                SpendCounter(
                    budget_id=b.id,
                    window_start=start,
                    limit_units=b.limit_units,
                    blocking=b.blocking,
                )
                for b, start in missing
            ],
            ignore_conflicts=True,
        )
        for row in counters.filter(
            budget_id__in=[b.id for b, _ in missing],
            window_start__in={start for _, start in missing},
        ).values("id", "budget_id", "window_start"):
            _cache.counters[(row["budget_id"], row["window_start"])] = row["id"]
    return [_cache.counters[(b.id, start)] for b, start in wanted]


# -- settlement in the recorder (write hooks) -------------------------------------------

#: The metadata key of an event whose budget charge is not its ``cost_usd``: an unpriced
#: event charged its estimate (``note_estimate_charges``), or an ingested event whose
#: client-supplied cost does not count towards budgets (``"0"``: its key lacks
#: ``may_charge_budgets``). ``window_spend`` counts this amount instead of the cost.
BUDGET_CHARGED_KEY = "budget_charged_usd"


def note_estimate_charges(records: Sequence[EventRecord]) -> None:
    """Write hook (before rows are made): note on each unpriced record charged its
    estimate, in its metadata, so that ``reconcile`` counts it."""
    for record in records:
        if record.budget_reservation and record.cost_usd is None:
            charged = charge(record)
            if charged:
                record.metadata = {
                    **record.metadata,
                    BUDGET_CHARGED_KEY: str(from_units(charged)),
                }


def settle_batch(records: Sequence[EventRecord]) -> list[int]:
    """Write hook (in the write's transaction): settle the reservations of the records
    this transaction inserted that were not settled at the end of their call — by token
    where a settlement was tried (it may have committed), directly where none was (an
    ingested event) — and drop their tokens. Returns the counters these records touched
    (for threshold alerts)."""
    reserved = [r for r in records if r.budget_reservation]
    if not reserved:
        return []
    touched = {int(c) for r in reserved for c in r.budget_reservation["counters"]}  # type: ignore[index]
    tried: list[EventRecord] = []  # (a settlement tried at the end of its call: by token)
    untried: list[EventRecord] = []
    for record in reserved:
        if not _settled(record):
            attempted = record.budget_reservation.get("attempted")  # type: ignore[union-attr]
            (tried if attempted else untried).append(record)
    settle_once(tried)
    settle_counters(settlement_for(untried))
    forget_tokens(reserved)
    return sorted(touched)


def _settled(record: EventRecord) -> bool:
    return bool(record.budget_reservation and record.budget_reservation.get("settled"))


# -- settlement at the end of the call ------------------------------------------------


class _Settler:
    """Settles reservations at the end of their call, so that spend is current within one
    call whatever the recorder: in the caller (one statement), or — on a running event
    loop, where no database I/O may happen — in the ledger thread (``counters``), within
    milliseconds. A reservation check waits for this process's pending settlements first
    (off the loop), so a sequential loop sees its previous call's real cost."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):  # (a parent's pending futures never end here)
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[None]] = set()

    def settle(self, record: EventRecord) -> None:
        """Settle ``record``'s reservation with its (priced) cost and mark it settled; if
        the database can't be reached the recorder settles it when the event is written."""
        if not record.budget_reservation or _settled(record):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._settle(record)
            return
        with self._lock:
            # Marked now, before the record can reach a writer: the write hook must not
            # settle it as well. (If this settlement fails, it is unmarked first.)
            record.budget_reservation = {**record.budget_reservation, "settled": True}
            future = in_ledger_thread(lambda: self._settle(record))
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _settle(self, record: EventRecord) -> None:
        reservation = record.budget_reservation
        assert reservation is not None
        try:
            # (One statement: once, however often it is retried; not in a transaction of
            # the caller's, whose rollback would undo it while the event is stored.)
            outside_callers_transaction(lambda: settle_once([record]))
        except (DatabaseError, InterfaceError):
            logger.warning(
                "FluxGate could not settle a budget reservation now; it is settled when "
                "the call's event is written",
                exc_info=True,
            )
            # It may have committed all the same (a cut COMMIT): the write hook settles
            # it by its token, which says.
            record.budget_reservation = {**reservation, "settled": False, "attempted": True}
            return
        record.budget_reservation = {**reservation, "settled": True}

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait(self, timeout: float = 2.0) -> bool:
        """Wait (off any event loop) for this process's pending settlements; False if some
        were still pending after ``timeout``."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return True
        return not concurrent.futures.wait(pending, timeout=timeout).not_done


settler = _Settler()


def window_spend(budget: Any, start: dt.date) -> Decimal:
    """What the budget's stored events in the window starting on ``start`` charged it:
    their costs, except where an event notes another charge (``BUDGET_CHARGED_KEY``: the
    estimate charged for an unpriced event, 0 for an ingested cost that does not count
    towards budgets), read on the counters' database (not a replica that may lag)."""
    from .models import Event

    lower, upper = window_bounds(budget.period, start)
    events = Event.objects.using(counters_alias()).filter(
        team_id=budget.team_id, created_at__gte=lower, created_at__lt=upper
    )
    if budget.feature:
        events = events.filter(feature=budget.feature)
    total = events.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
    noted = events.filter(metadata__has_key=BUDGET_CHARGED_KEY)
    for cost, metadata in noted.values_list("cost_usd", "metadata"):
        try:
            charged = Decimal(str(metadata[BUDGET_CHARGED_KEY]))
        except (ArithmeticError, ValueError, TypeError, KeyError):
            continue  # (not a charge FluxGate noted: the cost counts)
        if charged.is_finite():
            total += charged - (cost or Decimal(0))
    return total


def reconcile(budget: Any, *, release_reservations: bool = False) -> Any:
    """Recompute a budget's current-window spend from its events.

    For after a database crash lost the last counter updates (see ``counters._NO_WAIT``),
    or to free reservations left by processes killed mid-call (only when no call is in
    flight). Returns the counter.
    """
    from .models import SpendCounter

    start = window_start(budget.period)
    spent = window_spend(budget, start)
    counter, _ = SpendCounter.objects.db_manager(counters_alias()).get_or_create(
        budget=budget,
        window_start=start,
        defaults={
            "limit_units": to_units(budget.limit_usd),
            "blocking": budget.action == budget.Action.BLOCK,
        },
    )
    counter.spent_units = to_units(spent)
    fields = ["spent_units"]
    if release_reservations:
        counter.reserved_units = 0
        fields.append("reserved_units")
    counter.save(update_fields=fields)
    return counter


def open_current_window(budget: Any) -> Any:
    """The counter of a budget's current window; a new one (a new budget, or a budget whose
    period changed) counts what the window has already spent (the team's, or the
    feature's, stored events since the window began): a budget added on the 20th of the
    month starts at the month's spend so far, not at $0. Returns
    the counter (an existing one is left as it is), or None when the window has spent
    nothing yet (its counter is then created by the first call, as usual)."""
    from .models import SpendCounter

    start = window_start(budget.period)
    counters = SpendCounter.objects.db_manager(counters_alias())
    existing = counters.filter(budget=budget, window_start=start).first()
    if existing is not None:
        return existing
    spent = to_units(window_spend(budget, start))
    if spent <= 0:
        return None
    counter, _ = counters.get_or_create(
        budget=budget,
        window_start=start,
        defaults={
            "limit_units": to_units(budget.limit_usd),
            "blocking": budget.action == "block",
            "spent_units": spent,
        },
    )
    return counter


def connect_signals() -> None:
    """Keep counters' copied limits current and caches fresh as budgets change; a new
    budget starts from its window's existing spend, and a budget saved over one of its
    thresholds (created late, or its limit lowered) raises that threshold's alert."""
    from django.db.models.signals import post_delete, post_save

    from .alerts import check_thresholds
    from .models import Budget, SpendCounter

    def saved(sender: Any, instance: Any, created: bool = False, **kwargs: Any) -> None:
        if kwargs.get("raw"):
            return  # loaddata: the fixture's rows as they are
        SpendCounter.objects.db_manager(counters_alias()).filter(budget=instance).update(
            limit_units=to_units(instance.limit_usd),
            blocking=instance.action == Budget.Action.BLOCK,
        )
        _cache.budgets.pop(instance.team_id, None)
        # (Created, or edited: a new period starts a window this budget has no counter of.)
        counter = open_current_window(instance)
        if counter is not None:
            _cache.counters[(instance.id, counter.window_start)] = counter.id
            check_thresholds([counter.id])

    def deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
        _cache.budgets.pop(instance.team_id, None)

    post_save.connect(saved, sender=Budget, weak=False, dispatch_uid="fluxgate_budget_saved")
    post_delete.connect(deleted, sender=Budget, weak=False, dispatch_uid="fluxgate_budget_del")
