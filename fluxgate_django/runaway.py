"""Runaway detection: spend rate far above its trailing average, beyond fixed budgets.

Spend is counted per minute in Django's cache (``RUNAWAY_DETECTION["cache_alias"]``;
Redis in production, so every process sees the same counts), per team and per team and
feature. After each recorded batch, a touched key whose last ``window_minutes`` cost
more than ``factor`` times its average per window over the preceding ``baseline_minutes``
(and at least ``min_spend_usd``) is a runaway: ``spend_anomaly_detected`` fires once per
window, a ``SpendAnomaly`` row is stored, the team's admins are told, and — with
``block_minutes`` > 0 — its calls are refused for that long.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from decimal import Decimal
from typing import Any

from django.core.cache import caches
from django.db import router, transaction
from django.utils import timezone

from .alerts import dispatch_anomaly_notification
from .conf import fluxgate_settings
from .ledger import BUDGET_CHARGED_KEY
from .money import from_units, to_units
from .signals import spend_anomaly_detected

logger = logging.getLogger("fluxgate.runaway")

_PREFIX = "fluxgate:rate"


def _scope(team_id: int, feature: str) -> str:
    """A cache-safe key part for a team and feature (feature names are user data)."""
    if not feature:
        return f"{team_id}:"
    return f"{team_id}:{hashlib.sha256(feature.encode()).hexdigest()[:24]}"


def _options() -> dict[str, Any]:
    return fluxgate_settings.RUNAWAY_DETECTION


def _cache() -> Any:
    return caches[_options().get("cache_alias", "default")]


def _minute(now: float | None = None) -> int:
    return int((now if now is not None else time.time()) // 60)


#: [minute, the counter keys of that minute this process has created (cache.add)].
_created: list[Any] = [None, set()]


def count_written(batch: Any) -> None:
    """Write hook (after commit): feed runaway detection with a batch's spend per team and
    feature — of calls made within its window: an ingested or replayed event dated
    earlier is not this minute's spend, nor is an ingested cost that does not count
    towards budgets (``BUDGET_CHARGED_KEY``: its key lacks ``may_charge_budgets``)."""
    if not fluxgate_settings.RUNAWAY_DETECTION.get("enabled"):
        return
    cutoff = timezone.now() - dt.timedelta(minutes=int(_options()["window_minutes"]))
    costs: dict[tuple[int, str], Any] = {}
    for record in batch.records:
        if (
            record.cost_usd is None
            or BUDGET_CHARGED_KEY in record.metadata
            or _before(record.created_at, cutoff)
        ):
            continue
        team_id = batch.team_id(record)
        if team_id is not None:
            key = (int(team_id), record.feature)
            costs[key] = costs.get(key, 0) + record.cost_usd
    # One conversion per team and feature, not per event (a heuristic's input: the
    # rounding of a sum rather than a sum of roundings is fine).
    record_spend({key: to_units(cost) for key, cost in costs.items()})


def _before(created_at: Any, cutoff: dt.datetime) -> bool:
    try:
        return bool(created_at < cutoff)
    except TypeError:  # (an aware time on a USE_TZ=False site, or the reverse: counted)
        return False


def record_spend(spend: dict[tuple[int, str], int], now: float | None = None) -> None:
    """Add ``{(team_id, feature): units}`` to this minute's counters, then look for runaways."""
    options = _options()
    if not options.get("enabled") or not spend:
        return
    cache = _cache()
    minute = _minute(now)
    window = int(options["window_minutes"])
    ttl = (int(options["baseline_minutes"]) + window + 1) * 60
    totals: dict[tuple[int, str], int] = {}
    for (team_id, feature), units in spend.items():
        if units <= 0:
            continue
        totals[(team_id, "")] = totals.get((team_id, ""), 0) + units
        if feature:
            totals[(team_id, feature)] = totals.get((team_id, feature), 0) + units
    if _created[0] != minute:
        _created[:] = [minute, set()]
    created: set[str] = _created[1]
    for (team_id, feature), units in totals.items():
        key = f"{_PREFIX}:{_scope(team_id, feature)}:{minute}"
        if key not in created:  # one round trip less per key after its first batch
            cache.add(key, 0, ttl)
            created.add(key)
        try:
            cache.incr(key, units)
        except ValueError:  # expired between add and incr
            cache.set(key, units, ttl)
    _check(list(totals), minute)


def _check(scopes: list[tuple[int, str]], minute: int) -> None:
    """Compare each scope's recent window with its baseline.

    One cache read per batch: the recent window's counters, and each scope's baseline
    total — the minutes before the window, which no longer change — summed once a minute
    and kept in the cache beside the counters (so every process shares it).
    """
    options = _options()
    window = int(options["window_minutes"])
    baseline = int(options["baseline_minutes"])
    recent = range(minute - window + 1, minute + 1)
    keys = {scope: [f"{_PREFIX}:{_scope(*scope)}:{m}" for m in recent] for scope in scopes}
    base_keys = {scope: f"{_PREFIX}-baseline:{_scope(*scope)}:{minute}" for scope in scopes}
    cache = _cache()
    values = cache.get_many([k for ks in keys.values() for k in ks] + list(base_keys.values()))
    missing = [scope for scope in scopes if base_keys[scope] not in values]
    if missing:
        before = range(minute - window - baseline + 1, minute - window + 1)
        minute_keys = {s: [f"{_PREFIX}:{_scope(*s)}:{m}" for m in before] for s in missing}
        found = cache.get_many([k for ks in minute_keys.values() for k in ks])
        totals = {
            base_keys[s]: sum(int(found.get(k, 0)) for k in ks) for s, ks in minute_keys.items()
        }
        cache.set_many(totals, 120)
        values.update(totals)

    min_spend = Decimal(str(options["min_spend_usd"]))
    factor = Decimal(str(options["factor"]))
    runaways = []
    for scope, scope_keys in keys.items():
        recent_usd = from_units(sum(int(values.get(k, 0)) for k in scope_keys))
        if recent_usd < min_spend:
            continue
        baseline_per_window = from_units(int(values[base_keys[scope]])) * window / baseline
        if recent_usd > factor * baseline_per_window:
            runaways.append((*scope, recent_usd, baseline_per_window))
    if not runaways:
        return
    from .models import SpendAnomaly

    # One transaction for the batch's anomalies (on their database): their notifications
    # go out once all of them are stored (a team and its feature often run away together).
    alias = str(router.db_for_write(SpendAnomaly))
    with transaction.atomic(using=alias):
        for team_id, feature, recent_usd, baseline_per_window in runaways:
            # Once per window, across processes.
            if cache.add(f"fluxgate:anomaly:{_scope(team_id, feature)}", 1, window * 60):
                _raise_anomaly(team_id, feature, window, recent_usd, baseline_per_window, alias)


def _raise_anomaly(
    team_id: int, feature: str, window: int, recent: Decimal, baseline: Decimal, alias: str
) -> None:
    from .models import SpendAnomaly, Team

    block_minutes = int(_options().get("block_minutes") or 0)
    blocked_until = None
    if block_minutes:
        blocked_until = timezone.now() + dt.timedelta(minutes=block_minutes)
        _cache().set(_block_key(team_id, feature), blocked_until.timestamp(), block_minutes * 60)
    team = Team.objects.using(alias).get(pk=team_id)
    anomaly = SpendAnomaly.objects.using(alias).create(
        team=team,
        feature=feature[: SpendAnomaly._meta.get_field("feature").max_length],
        window_minutes=window,
        recent_usd=recent,
        baseline_usd=baseline,
        blocked_until=blocked_until,
    )
    logger.warning(
        "FluxGate runaway spend: team %s%s spent $%s in %d min (baseline $%s per window)%s",
        team.slug,
        f" feature {feature}" if feature else "",
        recent,
        window,
        baseline.quantize(Decimal("0.0001")),
        f"; blocked until {blocked_until:%H:%M:%S}" if blocked_until else "",
    )
    spend_anomaly_detected.send(
        sender=Team,
        team=team,
        feature=feature,
        anomaly=anomaly,
        recent_usd=recent,
        baseline_usd=baseline,
    )
    # After commit: the notification is read by another thread or a Celery worker.
    transaction.on_commit(lambda: dispatch_anomaly_notification(anomaly.pk), using=alias)


def _block_key(team_id: int, feature: str) -> str:
    return f"fluxgate:block:{_scope(team_id, feature)}"


def blocked_until(team_id: int, feature: str) -> dt.datetime | None:
    """When a runaway block on this team (or its feature) ends; None if not blocked."""
    values = _cache().get_many([_block_key(team_id, ""), _block_key(team_id, feature)])
    ends = [v for v in values.values() if v and v > time.time()]
    if not ends:
        return None
    return dt.datetime.fromtimestamp(max(ends), tz=dt.timezone.utc)


def unblock(team_id: int, feature: str = "") -> None:
    """Lift a runaway block by hand."""
    _cache().delete(_block_key(team_id, feature))
