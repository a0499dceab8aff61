"""Retention: delete events older than ``FLUXGATE["RETENTION_DAYS"]``, in batches.

Rollups and budget counters are kept, so reports over old periods still work; only the
per-call rows go. Batches keep each DELETE short (no long locks on a busy table).
"""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from .conf import fluxgate_settings


def delete_old_events(*, batch_size: int = 10_000, now: dt.datetime | None = None) -> int:
    """Delete events past the retention period; returns how many. None keeps everything."""
    from .models import Event

    days = fluxgate_settings.RETENTION_DAYS
    if not days:
        return 0
    cutoff = (now or timezone.now()) - dt.timedelta(days=int(days))
    deleted = 0
    while True:
        ids = list(
            Event.objects.filter(created_at__lt=cutoff)
            .order_by("created_at")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return deleted
        deleted += Event.objects.filter(id__in=ids)._raw_delete(Event.objects.db)
