"""``Authorization: Bearer <api key>``: a request made with a team's FluxGate API key.

The key is looked up by its public prefix and its hash compared in constant time
(:meth:`~fluxgate_django.models.ApiKeyManager.get_from_secret`); revoked keys fail.
Failed attempts are counted per client address
(:class:`~fluxgate_django.api.throttling.AuthFailureThrottle`, ``AUTH_FAILURE_RATE``):
past the limit, Bearer requests from that address are answered 429 with ``Retry-After``
before their key is looked at.
``request.user`` becomes an :class:`ApiKeyPrincipal` (authenticated, not staff, no Django
user behind it) and ``request.auth`` the :class:`~fluxgate_django.models.ApiKey`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NoReturn

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request

from ..models import ApiKey
from .throttling import AuthFailureThrottle

#: ``last_used_at`` is written at most this often per key (not on every request).
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)

#: What a key secret can look like; anything else is refused before the database is asked
#: (a NUL byte or a megabyte-long token never reaches a query).
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_\-]{1,200}")


class ApiKeyPrincipal:
    """``request.user`` for a request authenticated by an API key.

    Shaped like Django's ``AnonymousUser`` (no primary key, no permissions) except that
    it is authenticated; ``team`` and ``api_key`` say whose key it is.
    """

    id = None
    pk = None
    is_active = True
    is_staff = False
    is_superuser = False
    is_anonymous = False
    is_authenticated = True

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key
        self.team = api_key.team
        self.username = f"api-key:{api_key.prefix}"

    def __str__(self) -> str:
        return self.username

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        return False

    def has_perms(self, perm_list: Any, obj: Any = None) -> bool:
        return False

    def has_module_perms(self, module: str) -> bool:
        return False

    def get_all_permissions(self, obj: Any = None) -> set[str]:
        return set()


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication by a FluxGate API key in ``Authorization: Bearer fg_live_...``.

    Requests without a Bearer header are left to the next authentication class (the
    session); a Bearer header with an unknown, revoked or malformed key is refused (401).
    """

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        throttle = AuthFailureThrottle()
        wait = throttle.wait(request)
        if wait is not None:
            raise Throttled(wait, _THROTTLED)
        if len(parts) != 2:
            _refuse(throttle, request, "Invalid Authorization header: expected 'Bearer <api key>'.")
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            secret = ""
        key = key_for_secret(secret)
        if key is None:
            _refuse(throttle, request, "Invalid or revoked API key.")
        touch_key(key)
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (with this challenge) rather than 403 when unauthenticated.
        return f'{self.keyword} realm="fluxgate"'


_THROTTLED = "Too many failed API-key authentications from this address."


def _refuse(throttle: AuthFailureThrottle, request: Request, message: str) -> NoReturn:
    """Count the failure, then answer 401 (or 429 once past the limit)."""
    wait = throttle.failed(request)
    if wait is not None:
        raise Throttled(wait, _THROTTLED)
    raise AuthenticationFailed(message)


def key_for_secret(secret: str) -> ApiKey | None:
    """The active key whose secret this is (None for anything else, a malformed secret
    refused before the database is asked). Shared with the gateway (``x-api-key``)."""
    return ApiKey.objects.get_from_secret(secret) if _SECRET_SHAPE.fullmatch(secret) else None


def touch_key(key: ApiKey) -> None:
    """Record that ``key`` was used, at most once per ``LAST_USED_RESOLUTION``."""
    now = timezone.now()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    key.last_used_at = now
