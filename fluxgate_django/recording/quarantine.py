"""The dead-letter table: where an event goes that the database refuses on its own.

The writer bisects a batch that fails for a data reason (:mod:`.failures`) down to the
records refused alone, and hands each to :func:`quarantine`: a ``DeadLetter`` row with
the record as JSON text and the database's reason (in the admin), and — in the same
transaction — its budget reservation withdrawn, so that budgets count exactly the
stored events (spend == the sum of their costs). Quarantining is idempotent by
``tracking_id``: a batch written again (a Celery retry, a spool replay) quarantines and
withdraws nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from django.db import IntegrityError, transaction

from .. import counters, teams
from ..records import EventRecord

logger = logging.getLogger("fluxgate.recording")

_MAX_REASON = 4000


def quarantine(record: EventRecord, reason: str, alias: str) -> bool:
    """Store ``record`` in the dead-letter table with ``reason`` and withdraw its budget
    reservation, in one transaction on ``alias`` (the events' database, where the
    counters are too). False if it was quarantined before."""
    from ..models import DeadLetter

    letter = DeadLetter(
        tracking_id=record.tracking_id,
        created_at=record.created_at if _aware(record.created_at) else None,
        team_id=_team_id(record.team),
        provider=_text(record.provider, 50),
        model=_text(record.model or record.requested_model, 200),
        feature=_text(record.feature, 100),
        source=_text(record.source, 20),
        reason=_text(reason, _MAX_REASON),
        record=_as_json(record),
    )
    for _ in range(2):
        try:
            with transaction.atomic(using=alias):
                letter.save(force_insert=True, using=alias)
                counters.withdraw([record])
        except IntegrityError:
            if DeadLetter.objects.using(alias).filter(tracking_id=record.tracking_id).exists():
                return False  # quarantined before
            if letter.team_id is None:
                raise
            letter.team_id = None  # the team was deleted meanwhile
            letter.pk = None
            continue
        logger.error(
            "FluxGate could not store event %s and quarantined it (see DeadLetter in the "
            "admin): %s",
            record.tracking_id,
            letter.reason.partition("\n")[0],  # (the rest may quote the value: not logged)
        )
        return True
    raise AssertionError("unreachable")  # pragma: no cover


def describe(exc: BaseException, *, full: bool = True) -> str:
    """Why a write failed, as the database (or the driver) said it. ``full=False``: the
    first line only, for logs (PostgreSQL's detail and context lines quote the value)."""
    cause = exc.__cause__ or exc
    text = f"{type(cause).__name__}: {cause}".strip()
    return text[:_MAX_REASON] if full else text.partition("\n")[0][:300]


def _as_json(record: EventRecord) -> str:
    """The record as JSON text that any database stores: every non-ASCII character (NUL,
    a lone surrogate) an escape, values JSON can't encode as their ``repr``."""
    try:
        return json.dumps(record.to_json(), default=repr, ensure_ascii=True)
    except Exception:  # a field of a type to_json doesn't know
        return json.dumps({"repr": repr(record)}, ensure_ascii=True)


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def _aware(value: Any) -> bool:
    return isinstance(value, dt.datetime) and value.tzinfo is not None


def _team_id(team: Any) -> int | None:
    try:
        if isinstance(team, str):
            return teams.team_ids([team]).get(team)
        if isinstance(team, int):
            return team
        pk = getattr(team, "pk", None)
        return pk if isinstance(pk, int) else None
    except Exception:
        return None
