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
from django.db import transaction
from django.utils import timezone

from .conf import fluxgate_settings

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
    for (team_id, feature), units in totals.items():
        key = f"{_PREFIX}:{_scope(team_id, feature)}:{minute}"
        cache.add(key, 0, ttl)
        try:
            cache.incr(key, units)
        except ValueError:  # expired between add and incr
            cache.set(key, units, ttl)
    for team_id, feature in totals:
        _check(team_id, feature, minute)


def _check(team_id: int, feature: str, minute: int) -> None:
    options = _options()
    window = int(options["window_minutes"])
    baseline = int(options["baseline_minutes"])
    cache = _cache()
    scope = _scope(team_id, feature)
    keys = [f"{_PREFIX}:{scope}:{m}" for m in range(minute - window - baseline + 1, minute + 1)]
    values = cache.get_many(keys)
    counts = [int(values.get(k, 0)) for k in keys]
    recent = sum(counts[-window:])
    previous = sum(counts[:-window])
    from .models import from_units

    recent_usd = from_units(recent)
    if recent_usd < Decimal(str(options["min_spend_usd"])):
        return
    baseline_per_window = from_units(previous) * window / baseline
    if recent_usd <= Decimal(str(options["factor"])) * baseline_per_window:
        return
    # Once per window, across processes.
    if not cache.add(f"fluxgate:anomaly:{scope}", 1, window * 60):
        return
    _raise_anomaly(team_id, feature, window, recent_usd, baseline_per_window)


def _raise_anomaly(
    team_id: int, feature: str, window: int, recent: Decimal, baseline: Decimal
) -> None:
    from .alerts import dispatch_anomaly_notification
    from .models import SpendAnomaly, Team
    from .signals import spend_anomaly_detected

    block_minutes = int(_options().get("block_minutes") or 0)
    blocked_until = None
    if block_minutes:
        blocked_until = timezone.now() + dt.timedelta(minutes=block_minutes)
        _cache().set(_block_key(team_id, feature), blocked_until.timestamp(), block_minutes * 60)
    team = Team.objects.get(pk=team_id)
    anomaly = SpendAnomaly.objects.create(
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
    transaction.on_commit(lambda: dispatch_anomaly_notification(anomaly.pk))


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
