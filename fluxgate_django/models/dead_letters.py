"""Events the database refused: quarantined, with the reason, for a person to look at."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from .teams import Team


class DeadLetter(models.Model):
    """One event that could not be stored (a value the database refuses, found by
    bisecting its batch): its record as JSON text and the database's reason.

    Written only by the recorder (:mod:`fluxgate_django.recording.quarantine`); read-only
    in the admin. A quarantined event counts in no report or budget until it is repaired
    and ingested again.
    """

    tracking_id = models.UUIDField(unique=True)
    quarantined_at = models.DateTimeField(default=timezone.now, db_index=True)
    #: When the call was made (the record's ``created_at``).
    created_at = models.DateTimeField(null=True, blank=True)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_letters"
    )
    provider = models.CharField(max_length=50, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    feature = models.CharField(max_length=100, blank=True, default="")
    source = models.CharField(max_length=20, blank=True, default="")
    reason = models.TextField()
    #: The record as JSON text (``EventRecord.to_json``; NUL and other characters the
    #: database refuses are ``\\u`` escapes here, so the text itself is always storable).
    record = models.TextField()

    class Meta:
        ordering = ["-quarantined_at"]
        verbose_name = "dead letter"

    def __str__(self) -> str:
        return f"Quarantined event {self.tracking_id}"
