"""Records as rows of ``Event`` column values, and the links a row may no longer hold."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Sequence
from typing import Any

from ..records import EventRecord


def events_alias() -> str:
    """The database events are written on: the routers' ``db_for_write(Event)``.

    One write is one transaction on it: the event rows, the budget settlement, the
    rollups and the alerts of a batch (every FluxGate model is routed to one database:
    system check ``fluxgate.E011``). Reads inside the write use it too, never a
    ``db_for_read`` replica that may lag."""
    from django.db import router

    from ..models import Event

    return str(router.db_for_write(Event))


def to_event(record: EventRecord, team_ids: dict[str, int | None]) -> Any:
    """An unsaved ``Event`` for ``record`` (teams given as slugs resolved via ``team_ids``)."""
    from ..models import Event

    rows = event_rows_spec()
    return Event(**dict(zip(rows.columns, rows.row(record, team_ids), strict=True)))


class _EventRows:
    """Records as rows of ``Event`` column values, in the table's column order.

    One ``attrgetter`` call reads a record's fields (the writer builds a row per event, on
    a thread that shares the GIL with the callers), then the team (a slug, id or
    instance) becomes ``team_id``. The record builder already cut every text to its
    column's length; a record that reached the writer another way (a spool line or a
    task payload written by another version, a record copied with ``dataclasses.replace``)
    is cut here too, so one long value never fails its whole batch and every replay of it.
    """

    def __init__(self) -> None:
        from ..models import Event

        fields = [f for f in Event._meta.concrete_fields if not f.primary_key]
        self.fields = fields
        self.columns: list[str] = [f.attname for f in fields]
        self.index = {name: i for i, name in enumerate(self.columns)}
        sources = {"team_id": "team", "user_id": "user_pk"}
        self._get = operator.attrgetter(*(sources.get(c, c) for c in self.columns))
        self._team = self.index["team_id"]
        self._metadata = self.index["metadata"]
        self._limits = [
            (self.index[f.attname], f.max_length)
            for f in fields
            if f.max_length and f.get_internal_type() in ("CharField", "SlugField")
        ]

    def row(
        self,
        record: EventRecord,
        team_ids: dict[str, int | None],
        team_pks: dict[int, Any] | None = None,
    ) -> list[Any]:
        """``record``'s row; ``team_pks``: the pks of the batch's team objects, by
        ``id()``, filled as they are met (a ``Team``'s pk is a property)."""
        row = list(self._get(record))
        team = row[self._team]
        if team is not None and team.__class__ is not int:
            if isinstance(team, str):
                row[self._team] = team_ids.get(team)
                if row[self._team] is None:
                    row[self._metadata] = {**row[self._metadata], "unknown_team": team}
            elif team_pks is None:
                row[self._team] = team.pk
            else:
                pk = team_pks.get(id(team))
                if pk is None:
                    pk = team_pks[id(team)] = team.pk
                row[self._team] = pk
        for i, limit in self._limits:
            value = row[i]
            if value.__class__ is str and len(value) > limit:
                row[i] = value[:limit]
        return row


@functools.cache
def event_rows_spec() -> _EventRows:
    return _EventRows()


def event_rows(records: Sequence[EventRecord], team_ids: dict[str, int | None]) -> list[list[Any]]:
    """The ``Event`` rows of ``records`` (columns: ``event_rows_spec().columns``)."""
    row = event_rows_spec().row
    team_pks: dict[int, Any] = {}  # (the records hold their teams: no id is reused meanwhile)
    return [row(r, team_ids, team_pks) for r in records]


def drop_dangling_links(
    records: Sequence[EventRecord], team_ids: dict[str, int | None], alias: str
) -> Sequence[EventRecord]:
    """``records``, minus their links to users or teams that no longer exist.

    Foreign keys are checked when the transaction commits, so one event of a deleted user
    would fail its whole batch there (past the IntegrityError fallback) and every replay
    of it from the spool. The event is kept; only the broken link is dropped.

    Both are looked up on ``alias``, the events' database, where the foreign keys are
    checked: with FluxGate routed to a database of its own, a user who is only in the
    site's main database can't be linked there (the event keeps ``end_user_id``).
    """
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError

    from ..models import Team

    def team_pk(team: Any) -> Any:
        return team_ids.get(team) if isinstance(team, str) else getattr(team, "pk", team)

    user_model = get_user_model()
    wanted: dict[Any, Any] = {}
    gone_users: set[Any] = set()
    for raw in {r.user_pk for r in records if r.user_pk is not None}:
        try:
            wanted[raw] = user_model._meta.pk.to_python(raw)
        except ValidationError:
            gone_users.add(raw)
    if wanted:
        found = set(
            user_model._default_manager.using(alias)
            .filter(pk__in=wanted.values())
            .values_list("pk", flat=True)
        )
        gone_users.update(raw for raw, pk in wanted.items() if pk not in found)
    # (Each distinct team value once: a batch's records mostly share one.)
    distinct = {id(team): team for team in map(_team_of, records)}
    teams = {pk for pk in map(team_pk, distinct.values()) if pk is not None}
    gone_teams = teams - set(
        Team.objects.using(alias).filter(pk__in=teams).values_list("pk", flat=True)
    )
    if not gone_users and not gone_teams:
        return records
    return [
        dataclasses.replace(
            r,
            user_pk=None if r.user_pk in gone_users else r.user_pk,
            team=None if team_pk(r.team) in gone_teams else r.team,
        )
        for r in records
    ]


_team_of = operator.attrgetter("team")
