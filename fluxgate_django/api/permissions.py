"""Who may see and change what: one team's key, a team's members and admins, staff.

* An API key sees its own team only. It may ingest events and read its team's events,
  reports, team and budgets; it can't change budgets or manage API keys (a leaked key must
  not lift its own budget or mint more keys).
* A signed-in user sees the teams they are a member of, and manages (budgets, API keys)
  the teams they are an admin of.
* Staff (``is_staff``) see and manage every team.

Lists are filtered to what the requester may see, so another team's object is a 404, not
a 403: its existence is not revealed.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from ..models import ApiKey, Team, TeamMembership


def api_key_of(request: Request) -> ApiKey | None:
    """The API key the request was authenticated with, if any."""
    return request.auth if isinstance(request.auth, ApiKey) else None


def is_staff(request: Request) -> bool:
    """A signed-in site administrator who sees every team (never an API key).

    The same rule as the admin and its report (``reports.visible_teams``): a superuser.
    Other staff — ``view_event`` holders included, which a team admin needs to see their
    own team's events in the admin — are treated as the team members they are.
    """
    user = request.user
    return (
        api_key_of(request) is None
        and bool(getattr(user, "is_authenticated", False))
        and bool(getattr(user, "is_active", False))
        and bool(getattr(user, "is_staff", False))
        and bool(user.is_superuser)
    )


def teams_for(request: Request, *, manage: bool = False) -> QuerySet[Team]:
    """The teams the requester may see (``manage=False``) or manage (``manage=True``)."""
    key = api_key_of(request)
    if key is not None:
        return Team.objects.none() if manage else Team.objects.filter(pk=key.team_id)
    if is_staff(request):
        return Team.objects.all()
    user = request.user
    if not getattr(user, "is_authenticated", False) or user.pk is None:
        return Team.objects.none()
    memberships = TeamMembership.objects.filter(user_id=user.pk)
    if manage:
        memberships = memberships.filter(role=TeamMembership.Role.ADMIN)
    return Team.objects.filter(pk__in=memberships.values("team_id"))


class IsApiKey(BasePermission):
    """Only requests made with an API key (event ingest)."""

    message = "Sending events needs a team API key (Authorization: Bearer <api key>)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return api_key_of(request) is not None


class IsSignedInUser(BasePermission):
    """Only signed-in users, not API keys (managing API keys)."""

    message = "API keys are managed by team admins signed in to the site, not with a key."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return api_key_of(request) is None and bool(getattr(user, "is_authenticated", False))


class IsStaffOrReadOnly(BasePermission):
    """Anyone authenticated reads; only staff write (creating teams)."""

    message = "Only staff can create or change teams."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.method in SAFE_METHODS or is_staff(request)


class CanManageTeamObjects(BasePermission):
    """Reads for anyone who sees the object's team; writes for its team's admins and staff.

    The object must have a ``team_id``. Which team a new object may be created in is
    checked by the serializer (its ``team`` choices are the teams the requester manages).
    """

    message = "Only the team's admins and staff can change this."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return True
        if api_key_of(request) is not None:
            self.message = "An API key can't change budgets; a team admin signed in can."
            return False
        return True

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        if request.method in SAFE_METHODS:
            return True
        return teams_for(request, manage=True).filter(pk=obj.team_id).exists()
