"""Retention: delete events older than ``FLUXGATE["RETENTION_DAYS"]``, in batches.

Rollups and budget counters are kept, so reports over old periods still work; only the
per-call rows go. Batches keep each DELETE short (no long locks on a busy table). Budget
settlement tokens left behind (a call whose event was never stored) go after
``SettlementToken.TOKEN_DAYS`` whatever ``RETENTION_DAYS`` says.
"""

from __future__ import annotations

import datetime as dt

from django.db import router
from django.utils import timezone

from .conf import fluxgate_settings


def delete_old_events(*, batch_size: int = 10_000, now: dt.datetime | None = None) -> int:
    """Delete events past the retention period; returns how many. None keeps everything."""
    from .models import Event

    days = fluxgate_settings.RETENTION_DAYS
    if not days:
        return 0
    cutoff = (now or timezone.now()) - dt.timedelta(days=int(days))
    events = Event.objects.db_manager(router.db_for_write(Event))  # (not a read replica)
    deleted = 0
    while True:
        ids = list(
            events.filter(created_at__lt=cutoff)
            .order_by("created_at")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        deleted += events.filter(id__in=ids)._raw_delete(events.db)


def delete_old_settlement_tokens(*, now: dt.datetime | None = None) -> int:
    """Delete settlement tokens older than ``SettlementToken.TOKEN_DAYS`` (a stored event's
    token is deleted when it is stored; these are of calls whose event never was)."""
    from .models import SettlementToken

    cutoff = (now or timezone.now()) - dt.timedelta(days=SettlementToken.TOKEN_DAYS)
    tokens = SettlementToken.objects.db_manager(router.db_for_write(SettlementToken))
    return int(tokens.filter(created_at__lt=cutoff)._raw_delete(tokens.db))
