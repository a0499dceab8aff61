"""What else happens when events are written: hooks registered on the writer.

Budget settlement, report rollups, threshold alerts and runaway counters are not the
recorder's concern; each registers itself from ``AppConfig.ready()``, and the writer
calls them, so the recorder imports none of them:

* ``prepare`` hooks see every record of a batch before its rows are made (and may add
  to their metadata);
* ``in_transaction`` hooks see the records this transaction inserted (a record already
  stored — a spool replay, a batch delivered twice — is not in it), inside the write's
  transaction (on the batch's ``alias``): what they write commits or rolls back with
  the events;
* ``after_commit`` hooks see the same once the transaction has committed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ..records import EventRecord


@dataclasses.dataclass(frozen=True, slots=True)
class WrittenBatch:
    """The events one transaction inserted."""

    records: Sequence[EventRecord]
    #: Their ``Event`` rows (values in the order of ``columns``), or None when
    #: ``staged_table`` holds them (PostgreSQL, every row of the batch new).
    rows: Sequence[list[Any]] | None
    columns: Sequence[str]
    staged_table: str | None
    #: Team slugs of the batch → ids (None: no such team).
    team_ids: dict[str, int | None]
    #: The database the events were written on, in whose transaction ``on_write`` hooks
    #: run (the staging table is on this connection).
    alias: str
    #: The pk of each team object of the batch (by ``id()``), once asked.
    _team_pks: dict[int, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def team_id(self, record: EventRecord) -> int | None:
        team = record.team
        if team.__class__ is str or isinstance(team, str):
            return self.team_ids.get(team)
        if team is None or isinstance(team, int):
            return team
        # (A Team instance, as the ingest API's events have: its pk is a property.)
        known = self._team_pks
        try:
            return known[id(team)]
        except KeyError:
            pk = known[id(team)] = getattr(team, "pk", None)
            return pk


Prepare = Callable[[Sequence[EventRecord]], None]
Hook = Callable[[WrittenBatch], None]

_prepare: dict[str, Prepare] = {}
_in_transaction: dict[str, Hook] = {}
_after_commit: dict[str, Hook] = {}


def on_prepare(name: str, hook: Prepare) -> None:
    """Register (or replace) a hook run on each batch before its rows are made."""
    _prepare[name] = hook


def on_write(name: str, hook: Hook) -> None:
    """Register (or replace) a hook run inside each write's transaction."""
    _in_transaction[name] = hook


def after_write(name: str, hook: Hook) -> None:
    """Register (or replace) a hook run after each write has committed."""
    _after_commit[name] = hook


def prepare(records: Sequence[EventRecord]) -> None:
    for hook in _prepare.values():
        hook(records)


def written(batch: WrittenBatch) -> None:
    for hook in _in_transaction.values():
        hook(batch)


def committed(batch: WrittenBatch) -> None:
    for hook in _after_commit.values():
        hook(batch)
