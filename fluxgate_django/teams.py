"""Which team a call belongs to: the one slug → id cache, and the request's team.

Every entry — a slug found, a slug not found, a user's team — is kept for
``BUDGET_CACHE_SECONDS``, so a team (or membership) created by another process, or by
``bulk_create``/``update`` that send no signals, applies within that time. Saves and
deletes through the ORM in this process clear it at once (``connect_signals``).

The request's team (:class:`RequestTeam`, set by the middleware) is looked up only when a
call needs it, by this rule: the team named by the ``X-FluxGate-Team`` header if the user
is a member of it; else the membership the user marked as default
(``TeamMembership.is_default``); else the user's only team if they have exactly one;
else none.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from .conf import fluxgate_settings, on_reload
from .context import Deferred

# The characters of a SlugField (validate_slug), bounded by Team.slug's max_length.
_VALID_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,100}")
_MAX_ENTRIES = 10_000


class _Expiring:
    """A dict whose entries are forgotten ``BUDGET_CACHE_SECONDS`` after they were set."""

    def __init__(self) -> None:
        self._data: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bool, Any]:
        entry = self._data.get(key)
        if entry is None or time.monotonic() - entry[0] >= fluxgate_settings.BUDGET_CACHE_SECONDS:
            return False, None
        return True, entry[1]

    def last(self, key: Any) -> tuple[bool, Any]:
        """The entry however old (for when the database can't be asked)."""
        entry = self._data.get(key)
        return (False, None) if entry is None else (True, entry[1])

    def set(self, key: Any, value: Any) -> None:
        with self._lock:
            if len(self._data) >= _MAX_ENTRIES:  # names can come from API clients: bounded
                self._data.clear()
            self._data[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_slugs = _Expiring()
_user_teams = _Expiring()


def forget() -> None:
    """Teams or memberships changed: look everything up afresh."""
    _slugs.clear()
    _user_teams.clear()


on_reload(forget)


def team_ids(slugs: Iterable[str]) -> dict[str, int | None]:
    """``{slug: team id or None}`` for these slugs: one query for those not cached."""
    out: dict[str, int | None] = {}
    missing = []
    for slug in set(slugs):
        known, team_id = _slugs.get(slug)
        if known:
            out[slug] = team_id
        else:
            missing.append(slug)
    if missing:
        from .models import Team

        found = dict(Team.objects.filter(slug__in=missing).values_list("slug", "id"))
        for slug in missing:
            out[slug] = found.get(slug)
            _slugs.set(slug, out[slug])
    return out


def team_id_of(team: Any) -> int | None:
    """The id of a context ``team`` value (Team, id, slug or RequestTeam); None if unknown."""
    team = team.resolve() if isinstance(team, Deferred) else team
    if team is None:
        return None
    if isinstance(team, int):
        return team
    if isinstance(team, str):
        return team_ids([team])[team]
    return getattr(team, "pk", None)


def cached_team_id(team: Any) -> tuple[bool, int | None]:
    """In memory only: ``(known, id)`` of a context ``team`` value (no query)."""
    if team is None:
        return True, None
    if isinstance(team, int):
        return True, team
    if isinstance(team, RequestTeam):
        known, slug = team.cached()
        if not known:
            return False, None
        team = slug
        if slug is None:
            return True, None
    if isinstance(team, str):
        return _slugs.get(team)
    return True, getattr(team, "pk", None)


def last_known_team_id(team: Any) -> tuple[bool, int | None]:
    """Like :func:`cached_team_id`, but however old the answer: for when the database
    can't be asked (an outage)."""
    if isinstance(team, RequestTeam):
        known, slug = team.cached()
        if not known:
            known, slug = _user_teams.last((team.user_pk, team.requested))
            if not known:
                return False, None
        team = slug
    elif isinstance(team, Deferred):
        return False, None
    if isinstance(team, str):
        return _slugs.last(team)
    return cached_team_id(team)


class RequestTeam(Deferred):
    """The team of a request's user, looked up on first use (see the module's rule)."""

    __slots__ = ("_slug", "requested", "user_pk")

    def __init__(self, user_pk: Any, requested: str | None = None) -> None:
        self.user_pk = user_pk
        self.requested = requested if requested and _VALID_SLUG.fullmatch(requested) else None
        self._slug: Any = _UNSET

    def ready(self) -> bool:
        return self.cached()[0]

    def cached(self) -> tuple[bool, str | None]:
        if self._slug is not _UNSET:
            return True, self._slug
        return _user_teams.get((self.user_pk, self.requested))

    def resolve(self) -> str | None:
        if self._slug is _UNSET:
            known, slug = _user_teams.get((self.user_pk, self.requested))
            if not known:
                slug = _user_team(self.user_pk, self.requested)
                _user_teams.set((self.user_pk, self.requested), slug)
            self._slug = slug
        return self._slug

    def __repr__(self) -> str:
        slug = "?" if self._slug is _UNSET else self._slug
        return f"RequestTeam(user={self.user_pk!r}, team={slug!r})"


_UNSET: Any = object()


def _user_team(user_pk: Any, requested: str | None) -> str | None:
    """The rule of the module docstring, in one query."""
    from .models import TeamMembership

    rows = list(
        TeamMembership.objects.filter(user_id=user_pk)
        .order_by("-is_default", "team__slug")
        .values_list("team__slug", "is_default")[:1000]
    )
    if requested and any(slug == requested for slug, _ in rows):
        return requested
    if rows and rows[0][1]:
        return str(rows[0][0])
    if len(rows) == 1:
        return str(rows[0][0])
    return None


def connect_signals() -> None:
    """Forget cached teams when a team or membership is saved or deleted here."""
    from django.db.models.signals import post_delete, post_save

    from .models import Team, TeamMembership

    def changed(sender: Any, **kwargs: Any) -> None:
        forget()

    for model in (Team, TeamMembership):
        uid = f"fluxgate_teams_{model.__name__}"
        post_save.connect(changed, sender=model, weak=False, dispatch_uid=f"{uid}_saved")
        post_delete.connect(changed, sender=model, weak=False, dispatch_uid=f"{uid}_deleted")
