"""Budgets: check-and-reserve before a call, settle after it, across processes.

Before a call, :func:`check_budget` reserves an *estimated* cost (input estimated from the
request's text, output from ``max_tokens`` or ``BUDGET_DEFAULT_OUTPUT_TOKENS``) on every
budget that applies — the team's own, plus those scoped to the call's feature, for the
current day and month — with ONE conditional UPDATE::

    UPDATE spendcounter SET reserved = reserved + :x
     WHERE id IN (:counters) AND (NOT blocking OR spent + reserved + :x <= limit)
    RETURNING id

The database serialises concurrent updates of a row and re-checks the condition on the
newest row, so N workers together can never reserve past a limit: once the call's own
estimate fits, the overspend is bounded by the gap between estimate and real cost of
the calls in flight. If a blocking budget would be exceeded, a ``BUDGET_EXCEEDED``
event is recorded and :class:`~fluxgate_django.BudgetExceeded` raised — before any
provider request is sent.

The reservation travels on the call's event; the recorder settles it (reserved -= est,
spent += real cost) in the same transaction that stores the event, so a budget's spend
always equals the sum of its events' costs, whatever the recorder and even after a
spool replay. Threshold alerts are raised there too (see :mod:`fluxgate_django.alerts`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.db import DatabaseError, connections, router
from django.utils import timezone

from .conf import fluxgate_settings, on_reload
from .context import TrackingContext
from .exceptions import BudgetExceeded, BudgetStoreUnavailable
from .records import CallInfo, Source, Status, Usage

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


def window_start(period: str, now: dt.datetime | None = None) -> dt.date:
    """First day of the budget window containing ``now``, in the site's time zone."""
    today = timezone.localdate(now or timezone.now())
    return today if period == "day" else today.replace(day=1)


def window_end(period: str, start: dt.date) -> dt.date:
    if period == "day":
        return start + dt.timedelta(days=1)
    return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


# -- per-process caches --------------------------------------------------------------


class _BudgetCache:
    """Teams' budget lists, slug → id and counter ids per window, for BUDGET_CACHE_SECONDS.

    A budget saved or deleted in this process clears it at once (signals); other
    processes' edits are seen after at most BUDGET_CACHE_SECONDS.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self.team_ids: dict[str, int | None] = {}
        self.budgets: dict[int, tuple[float, tuple[BudgetInfo, ...]]] = {}
        self.counters: dict[tuple[int, dt.date], int] = {}

    def fresh(self, loaded_at: float) -> bool:
        return time.monotonic() - loaded_at < fluxgate_settings.BUDGET_CACHE_SECONDS


_cache = _BudgetCache()
on_reload(_cache.clear)


def clear_cache() -> None:
    """Forget cached budgets (after editing budgets outside the ORM, and in tests)."""
    _cache.clear()


def team_id_of(team: Any) -> int | None:
    """The id of a context ``team`` value (Team instance, id or slug); None if unknown."""
    if team is None:
        return None
    if isinstance(team, int):
        return team
    if not isinstance(team, str):
        return getattr(team, "pk", None)
    if team in _cache.team_ids:
        return _cache.team_ids[team]
    from .models import Team

    team_id = Team.objects.filter(slug=team).values_list("id", flat=True).first()
    _cache.team_ids[team] = team_id
    return team_id


def budgets_for_team(team_id: int) -> tuple[BudgetInfo, ...]:
    cached = _cache.budgets.get(team_id)
    if cached is not None and _cache.fresh(cached[0]):
        return cached[1]
    from .models import Budget, to_units

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


def might_apply(ctx: TrackingContext) -> bool:
    """Cheap, in-memory: could a budget apply to a call in ``ctx``? (False: skip the check.)"""
    team = ctx.team
    if team is None:
        return False
    team_id = team if isinstance(team, int) else getattr(team, "pk", None)
    if isinstance(team, str):
        if team not in _cache.team_ids:
            return True
        team_id = _cache.team_ids[team]
        if team_id is None:
            return False
    cached = _cache.budgets.get(team_id) if team_id is not None else None
    if cached is None or not _cache.fresh(cached[0]):
        return True
    return any(not b.feature or b.feature == ctx.feature for b in cached[1]) or _blocking_runaway()


def _blocking_runaway() -> bool:
    runaway = fluxgate_settings.RUNAWAY_DETECTION
    return bool(runaway.get("enabled")) and bool(runaway.get("block_minutes"))


def counter_ids(budgets: Iterable[BudgetInfo], now: dt.datetime | None = None) -> list[int]:
    """The ``SpendCounter`` ids of these budgets' current windows (created when missing)."""
    from .models import SpendCounter

    wanted = [(b, window_start(b.period, now)) for b in budgets]
    missing = [(b, start) for b, start in wanted if (b.id, start) not in _cache.counters]
    if missing:
        SpendCounter.objects.bulk_create(
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
        for row in SpendCounter.objects.filter(
            budget_id__in=[b.id for b, _ in missing],
            window_start__in={start for _, start in missing},
        ).values("id", "budget_id", "window_start"):
            _cache.counters[(row["budget_id"], row["window_start"])] = row["id"]
    return [_cache.counters[(b.id, start)] for b, start in wanted]


# -- estimates -----------------------------------------------------------------------

_TEXT_KEYS = ("messages", "input", "prompt", "system", "instructions", "contents")


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of text in a request body (messages, input, prompt, system...)."""
    return sum(_text_len(body[k]) for k in _TEXT_KEYS if k in body)


def _text_len(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_len(v) for k, v in value.items() if k not in ("role", "type"))
    if isinstance(value, (list, tuple)):
        return sum(_text_len(v) for v in value)
    return len(getattr(value, "content", "") or "") if hasattr(value, "content") else 0


def max_output_tokens(body: dict[str, Any], operation: str = "") -> int:
    if operation == "embeddings":
        return 0
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value >= 0:
            return value
    return int(fluxgate_settings.BUDGET_DEFAULT_OUTPUT_TOKENS)


#: Characters per input token assumed when estimating. Tokenizers average ~4 for English
#: prose but fewer for code and many other languages; 3 errs on the side of reserving
#: too much, so that estimates rarely fall short of the real cost.
CHARS_PER_TOKEN = 3


def estimate_cost(provider: str, model: str, chars: int, output_tokens: int) -> Decimal | None:
    """Estimated cost: input from the request's text, ``output_tokens`` at the output rate.

    None when the model has no price (the reservation is then 0, but an exhausted budget
    still blocks)."""
    from .pricing import price_book

    source = price_book.price_source(provider, model) if model else None
    if source is None:
        return None
    input_tokens = -(-chars // CHARS_PER_TOKEN)
    return source.cost(Usage(input_tokens=input_tokens, output_tokens=output_tokens))


# -- reserve / settle ----------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class BudgetGuard:
    """A reservation held on budget counters for one call."""

    counters: list[int]
    estimate_units: int
    released: bool = False

    def as_record_field(self) -> dict[str, Any]:
        """What an event carries so the recorder settles it with the event's real cost."""
        return {"counters": self.counters, "estimate_units": self.estimate_units}

    def attach(self, record: Any) -> None:
        """Let the recorder settle this reservation with ``record``'s cost, atomically."""
        record.budget_reservation = self.as_record_field()
        self.released = True

    def settle(self, cost: Decimal | None) -> None:
        """Settle now (for callers that record no event): charge ``cost``, free the rest."""
        from .models import to_units

        if not self.released:
            self.released = True
            charge = to_units(cost) if cost is not None else 0
            settle_counters({c: (self.estimate_units, charge) for c in self.counters})

    def release(self) -> None:
        """The call failed and was not billed: free the reservation."""
        self.settle(None)


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
) -> BudgetGuard | None:
    """Reserve the estimated cost of a call on every budget that applies.

    ``record_fields`` are set on the ``BUDGET_EXCEEDED`` event of a refused call
    (e.g. LangChain's ``run_id`` / ``parent_run_id``).

    Returns None when no budget applies. Raises :class:`BudgetExceeded` (after recording
    a ``BUDGET_EXCEEDED`` event) when a blocking budget would be exceeded, and
    :class:`BudgetStoreUnavailable` when the database can't be asked (unless
    ``BUDGET_FAIL_OPEN``).
    """
    try:
        team_id = team_id_of(ctx.team)
        if team_id is None:
            return None
        _check_runaway_block(ctx, team_id, provider, model, source, operation, record_fields)
        budgets = applicable_budgets(team_id, ctx.feature)
        if not budgets:
            return None
        out_tokens = (
            max_output_tokens
            if max_output_tokens is not None
            else int(fluxgate_settings.BUDGET_DEFAULT_OUTPUT_TOKENS)
        )
        estimate = estimate_cost(provider, model, prompt_chars, out_tokens)
        from .models import to_units

        units = to_units(estimate) if estimate is not None else 0
        ids = counter_ids(budgets)
        reserved = _reserve(ids, units)
    except DatabaseError as exc:
        if fluxgate_settings.BUDGET_FAIL_OPEN:
            logger.warning("FluxGate budget store unreachable; allowing the call (fail open)")
            return None
        raise BudgetStoreUnavailable(
            "FluxGate could not check the team's budget because the database is unreachable; "
            "the call was blocked. Set FLUXGATE['BUDGET_FAIL_OPEN'] = True to allow calls "
            "when the budget store is down.",
            team=ctx.team,
        ) from exc
    if len(reserved) == len(ids):
        return BudgetGuard(ids, units)
    if reserved:
        settle_counters({c: (units, 0) for c in reserved})
    failed = [(b, c) for b, c in zip(budgets, ids, strict=True) if c not in reserved]
    _reject(
        ctx, failed[0][0], failed[0][1], provider, model, source, operation, units, record_fields
    )
    return None  # pragma: no cover - _reject always raises


def _reserve(ids: list[int], units: int) -> set[int]:
    """One conditional UPDATE; the ids of the counters that took the reservation."""
    from .models import SpendCounter

    conn = connections[router.db_for_write(SpendCounter)]
    table = conn.ops.quote_name(SpendCounter._meta.db_table)
    placeholders = ", ".join(["%s"] * len(ids))
    where = (
        f"id IN ({placeholders}) AND "
        f"(NOT blocking OR spent_units + reserved_units + %s <= limit_units)"
    )
    sql = f"UPDATE {table} SET reserved_units = reserved_units + %s WHERE {where}"
    if conn.vendor == "postgresql":
        sql = _without_commit_wait(table, "reserved_units = reserved_units + %s", where)
    if _update_returning(conn):
        with conn.cursor() as cursor:
            cursor.execute(f"{sql} RETURNING id", [units, *ids, units])
            return {row[0] for row in cursor.fetchall()}
    # Databases without UPDATE ... RETURNING: one row at a time, in a transaction.
    from django.db import transaction

    taken = set()
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        for counter in ids:
            cursor.execute(
                f"UPDATE {table} SET reserved_units = reserved_units + %s WHERE id = %s AND "
                "(NOT blocking OR spent_units + reserved_units + %s <= limit_units)",
                [units, counter, units],
            )
            if cursor.rowcount:
                taken.add(counter)
    return taken


def _update_returning(conn: Any) -> bool:
    if conn.vendor == "postgresql":
        return True
    if conn.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35)
    return False


def settle_counters(changes: dict[int, tuple[int, int]]) -> None:
    """Apply ``{counter_id: (reserved units to free, units spent)}``."""
    if not changes:
        return
    from .models import SpendCounter

    conn = connections[router.db_for_write(SpendCounter)]
    table = conn.ops.quote_name(SpendCounter._meta.db_table)
    assignments = "reserved_units = reserved_units - %s, spent_units = spent_units + %s"
    sql = f"UPDATE {table} SET {assignments} WHERE id = %s"
    if conn.vendor == "postgresql" and not conn.in_atomic_block:
        sql = _without_commit_wait(table, assignments, "id = %s")
    with conn.cursor() as cursor:
        cursor.executemany(
            sql, [(freed, spent, counter) for counter, (freed, spent) in changes.items()]
        )


def _without_commit_wait(table: str, assignments: str, where: str) -> str:
    """The same UPDATE, committed without waiting for the WAL flush (PostgreSQL).

    A reservation is one autocommit statement; waiting for fsync at each commit caps a
    budget at a few hundred calls a second on ordinary disks (the flush, not the update,
    is the cost). Counters are derived data: events are stored durably, and
    ``manage.py fluxgate_budgets --reconcile`` rebuilds counters from them after a
    database crash lost their last moments. ``set_config(..., true)`` applies to this
    statement's own transaction only, in the same round trip.
    """
    return (
        "WITH fluxgate_no_wait AS (SELECT set_config('synchronous_commit', 'off', true)) "
        f"UPDATE {table} SET {assignments} FROM fluxgate_no_wait WHERE {where}"
    )


def _reject(
    ctx: TrackingContext,
    budget: BudgetInfo,
    counter_id: int,
    provider: str,
    model: str,
    source: Source,
    operation: str,
    units: int,
    record_fields: dict[str, Any] | None = None,
) -> None:
    from .alerts import raise_alert
    from .models import SpendCounter, from_units

    counter = SpendCounter.objects.select_related("budget").get(id=counter_id)
    limit, spent = counter.limit, counter.spent
    window = (counter.window_start, window_end(budget.period, counter.window_start))
    message = (
        f"Budget exceeded for team {ctx.team!r}"
        f"{' feature ' + repr(budget.feature) if budget.feature else ''}: "
        f"${spent} spent + ${counter.reserved} in flight of ${limit} per {budget.period}; "
        f"this call needs ~${from_units(units)}."
    )
    _record_rejection(ctx, provider, model, source, operation, message, budget, record_fields)
    raise_alert(counter.budget, counter, 100, kind="blocked")
    raise BudgetExceeded(
        message, team=ctx.team, budget=counter.budget, limit=limit, spent=spent, window=window
    )


def _record_rejection(
    ctx: TrackingContext,
    provider: str,
    model: str,
    source: Source,
    operation: str,
    message: str,
    budget: BudgetInfo | None,
    record_fields: dict[str, Any] | None = None,
) -> None:
    from .errors import capture_internal_exceptions
    from .pipeline import build_record, submit

    with capture_internal_exceptions("recording a blocked call"):
        info = CallInfo(
            provider=provider,
            operation=operation,
            requested_model=model,
            status=Status.BUDGET_EXCEEDED,
        )
        record = build_record(
            info,
            None,
            ctx,
            latency_ms=0.0,
            source=source,
            error_type="BudgetExceeded",
            extra_metadata={"budget_id": budget.id} if budget else None,
        )
        record.error_message = message
        for name, value in (record_fields or {}).items():
            setattr(record, name, value)
        submit(record)


def _check_runaway_block(
    ctx: TrackingContext,
    team_id: int,
    provider: str,
    model: str,
    source: Source,
    operation: str,
    record_fields: dict[str, Any] | None = None,
) -> None:
    if not _blocking_runaway():
        return
    from .runaway import blocked_until

    until = blocked_until(team_id, ctx.feature or "")
    if until is None:
        return
    message = (
        f"Runaway spend detected for team {ctx.team!r}"
        f"{' feature ' + repr(ctx.feature) if ctx.feature else ''}: calls are blocked until "
        f"{until:%Y-%m-%d %H:%M:%S %Z}."
    )
    _record_rejection(ctx, provider, model, source, operation, message, None, record_fields)
    raise BudgetExceeded(message, team=ctx.team, window=(timezone.now(), until))


# -- settlement in the recorder -------------------------------------------------------

#: When an event has no cost because its usage was not reported, the budget is charged
#: the reservation's estimate (a stream read without usage must not slip past budgets).
#: "usage-incomplete": a LangChain stream that reported output but no input count.
_CHARGE_ESTIMATE = frozenset(
    {"usage-missing", "usage-incomplete", "stream-incomplete", "streaming-response"}
)


def settlement_for(records: Iterable[Any]) -> dict[int, tuple[int, int]]:
    """``{counter: (freed, spent)}`` for the budget reservations these records carry.

    Also notes on a record's metadata when its budget was charged the estimate.
    """
    from .models import to_units

    changes: dict[int, list[int]] = {}
    for record in records:
        reservation = getattr(record, "budget_reservation", None)
        if not reservation:
            continue
        estimate = int(reservation["estimate_units"])
        if record.cost_usd is not None:
            spent = to_units(record.cost_usd)
        elif record.cost_source in _CHARGE_ESTIMATE and record.status != Status.ERROR.value:
            from .models import from_units

            spent = estimate
            record.metadata = {**record.metadata, "budget_charged_usd": str(from_units(estimate))}
        else:
            spent = 0
        for counter in reservation["counters"]:
            totals = changes.setdefault(int(counter), [0, 0])
            totals[0] += estimate
            totals[1] += spent
    return {c: (freed, spent) for c, (freed, spent) in changes.items()}


def window_bounds(period: str, start: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The window as aware datetimes in the site's time zone."""
    tz = timezone.get_current_timezone()
    end = window_end(period, start)
    return (
        timezone.make_aware(dt.datetime.combine(start, dt.time.min), tz),
        timezone.make_aware(dt.datetime.combine(end, dt.time.min), tz),
    )


def reconcile(budget: Any, *, release_reservations: bool = False) -> Any:
    """Recompute a budget's current-window spend from its events.

    For after a database crash lost the last counter updates (see _without_commit_wait),
    or to free reservations left by processes killed mid-call (only when no call is in
    flight). Returns the counter.
    """
    from django.db.models import Sum

    from .models import Event, SpendCounter, to_units

    start = window_start(budget.period)
    lower, upper = window_bounds(budget.period, start)
    events = Event.objects.filter(
        team_id=budget.team_id, created_at__gte=lower, created_at__lt=upper
    )
    if budget.feature:
        events = events.filter(feature=budget.feature)
    priced = events.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
    estimated = sum(
        (
            Decimal(m["budget_charged_usd"])
            for m in events.filter(cost_usd__isnull=True).values_list("metadata", flat=True)
            if isinstance(m, dict) and "budget_charged_usd" in m
        ),
        Decimal(0),
    )
    counter, _ = SpendCounter.objects.get_or_create(
        budget=budget,
        window_start=start,
        defaults={
            "limit_units": to_units(budget.limit_usd),
            "blocking": budget.action == "block",
        },
    )
    counter.spent_units = to_units(priced + estimated)
    fields = ["spent_units"]
    if release_reservations:
        counter.reserved_units = 0
        fields.append("reserved_units")
    counter.save(update_fields=fields)
    return counter


def connect_signals() -> None:
    """Keep counters' copied limits current and caches fresh as budgets change."""
    from django.db.models.signals import post_delete, post_save

    from .models import Budget, SpendCounter, Team, to_units

    def saved(sender: Any, instance: Any, **kwargs: Any) -> None:
        SpendCounter.objects.filter(budget=instance).update(
            limit_units=to_units(instance.limit_usd),
            blocking=instance.action == Budget.Action.BLOCK,
        )
        _cache.budgets.pop(instance.team_id, None)

    def deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
        _cache.budgets.pop(instance.team_id, None)

    def team_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
        # A slug may now name another team (or none): forget every slug -> id mapping.
        from .recording.base import forget_team_ids

        _cache.team_ids.clear()
        forget_team_ids()

    post_save.connect(saved, sender=Budget, weak=False, dispatch_uid="fluxgate_budget_saved")
    post_delete.connect(deleted, sender=Budget, weak=False, dispatch_uid="fluxgate_budget_del")
    post_save.connect(team_changed, sender=Team, weak=False, dispatch_uid="fluxgate_team_saved")
    post_delete.connect(team_changed, sender=Team, weak=False, dispatch_uid="fluxgate_team_del")
