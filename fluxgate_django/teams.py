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

A slug no team has is recorded as "no team". ``FLUXGATE["UNKNOWN_TEAM"]`` says what else
happens: ``"warn"`` (the default) logs a warning on the ``fluxgate`` logger once per slug
and process, naming the slug and how to create the team; ``"ignore"`` says nothing;
``"error"`` (for test suites) makes :func:`team_id_of` — what the budget check and the
service ask on the caller's path — raise :class:`UnknownTeam`, so the tracked call is
refused before anything is sent. The recorder's writer never raises for it: an event
already made is stored, without a team.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from .conf import fluxgate_settings, on_reload
from .context import Deferred
from .exceptions import CallRefused

logger = logging.getLogger("fluxgate")

UNKNOWN_TEAM_MODES = ("warn", "error", "ignore")

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


class UnknownTeam(CallRefused):
    """A call named a team slug that no ``Team`` has, and ``FLUXGATE["UNKNOWN_TEAM"]``
    is ``"error"`` (test suites): the call was refused before anything was sent."""

    def __init__(self, slug: str) -> None:
        super().__init__(
            f"No FluxGate team has the slug {slug!r}: create it (admin: FluxGate > Teams > "
            f"Add, or Team.objects.create(name=..., slug={slug!r})) or fix the slug. "
            "(Raised because FLUXGATE['UNKNOWN_TEAM'] is 'error'; the default, 'warn', "
            "records such calls without a team and logs a warning.)",
            team=slug,
        )
        self.slug = slug


def unknown_team_mode() -> str:
    """``FLUXGATE["UNKNOWN_TEAM"]``: ``"warn"``, ``"error"`` or ``"ignore"`` (anything
    else counts as ``"warn"``; ``manage.py check`` reports it)."""
    try:
        mode = fluxgate_settings.UNKNOWN_TEAM
    except Exception:  # unreadable settings: the default
        return "warn"
    return mode if mode in UNKNOWN_TEAM_MODES else "warn"


class _Warned:
    """The unknown slugs already logged in this process (at most ``limit``: slugs can
    come from API clients, so past it no more are logged rather than memory grown)."""

    limit = 1000

    def __init__(self) -> None:
        self._slugs: set[str] = set()
        self._lock = threading.Lock()

    def first_time(self, slug: str) -> bool:
        with self._lock:
            if slug in self._slugs or len(self._slugs) >= self.limit:
                return False
            self._slugs.add(slug)
            return True

    def clear(self) -> None:
        with self._lock:
            self._slugs.clear()


_warned = _Warned()
_MAX_LOGGED = 200  # characters of a slug put in a log line (it may come from a client)
on_reload(_warned.clear)  # (not on team saves: "once per slug" survives a team edit)


def _unknown(slug: str) -> None:
    """A lookup found no team with this slug: log it, once per slug, unless ignored."""
    if unknown_team_mode() == "ignore" or not _warned.first_time(slug):
        return
    logger.warning(
        "FluxGate: no team has the slug %r, so its LLM calls are recorded without a "
        "team (and no team budget applies). Create the team (admin: FluxGate > Teams > "
        "Add, or Team.objects.create(name=..., slug=%r)) or fix the slug passed as "
        "team=. Logged once per slug and process; FLUXGATE['UNKNOWN_TEAM'] = 'error' "
        "refuses such calls (for tests), 'ignore' silences this.",
        slug[:_MAX_LOGGED],
        slug[:_MAX_LOGGED],
    )


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
            if out[slug] is None and slug:
                _unknown(slug)
    return out


def team_id_of(team: Any) -> int | None:
    """The id of a context ``team`` value (Team, id, slug or RequestTeam); None if unknown.

    A slug no team has raises :class:`UnknownTeam` when ``FLUXGATE["UNKNOWN_TEAM"]`` is
    ``"error"`` (a RequestTeam's slug comes from a membership: it always exists)."""
    requested = team
    team = team.resolve() if isinstance(team, Deferred) else team
    if team is None:
        return None
    if isinstance(team, int):
        return team
    if isinstance(team, str):
        team_id = team_ids([team])[team]
        unknown = team_id is None and team and not isinstance(requested, Deferred)
        if unknown and unknown_team_mode() == "error":
            raise UnknownTeam(team)
        return team_id
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
        known, team_id = _slugs.get(team)
        if known and team_id is None and team and unknown_team_mode() == "error":
            return False, None  # not known to be harmless: the check (team_id_of) refuses it
        return known, team_id
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


def email_field_name() -> str | None:
    """The user model's e-mail field (``EMAIL_FIELD``, default ``email``), or None if it
    has none: a site's user model need not have one."""
    from django.contrib.auth import get_user_model
    from django.core.exceptions import FieldDoesNotExist

    User = get_user_model()
    name = User.get_email_field_name()
    try:
        User._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    return str(name)
