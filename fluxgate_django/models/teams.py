"""Teams, their members and their API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..conf import fluxgate_settings, on_reload


class Team(models.Model):
    """A group of people whose LLM spend is attributed, budgeted and reported together."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="TeamMembership", related_name="fluxgate_teams"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamMembership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", _("Admin")
        MEMBER = "member", _("Member")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="fluxgate_memberships"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)
    #: The team a member of several teams is attributed to when a request names none.
    is_default = models.BooleanField(
        default=False,
        help_text=_(
            "Attribute this user's LLM calls to this team when a request names none "
            "(X-FluxGate-Team). At most one per user."
        ),
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="fluxgate_unique_membership"),
            models.UniqueConstraint(
                fields=["user"],
                condition=models.Q(is_default=True),
                name="fluxgate_one_default_team",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


KEY_PREFIX = "fg_live_"


#: Keys found by their secret: ``{hash of the secret: (expires at (monotonic), key)}``.
_found_keys: dict[str, tuple[float, ApiKey]] = {}
_MAX_CACHED_KEYS = 10_000


@on_reload
def forget_api_keys(**_: Any) -> None:
    """Forget every key found (a key was revoked or deleted, or the settings changed)."""
    _found_keys.clear()


def hash_secret(secret: str) -> str:
    """SHA-256 of an API key secret. Keys carry 256 bits of randomness, so a fast hash is
    enough (as for GitHub tokens); only the hash is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyManager(models.Manager["ApiKey"]):
    def create_key(self, *, team: Team, name: str, **extra: Any) -> tuple[ApiKey, str]:
        """Create a key; returns ``(api_key, secret)``. The secret is not stored: show it once."""
        lookup = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{lookup}_{secrets.token_urlsafe(32)}"
        key = self.create(
            team=team,
            name=name,
            prefix=f"{KEY_PREFIX}{lookup}",
            hashed_key=hash_secret(secret),
            **extra,
        )
        return key, secret

    def get_from_secret(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, compared in constant time; else ``None``.

        A key found is kept in this process for ``API_KEY_CACHE_SECONDS`` (by its
        secret's hash, never the secret), so that an API request costs no query for it:
        a key revoked or deleted in this process is forgotten at once (signals, and the
        admin's bulk revoke), in other processes within that time."""
        if not secret.startswith(KEY_PREFIX) or secret.count("_") < 3:
            return None
        hashed = hash_secret(secret)
        cached = _found_keys.get(hashed)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        prefix = secret[: secret.index("_", len(KEY_PREFIX))]
        key = self.filter(prefix=prefix, revoked_at__isnull=True).select_related("team").first()
        if key is None or not hmac.compare_digest(key.hashed_key, hashed):
            return None
        seconds = fluxgate_settings.API_KEY_CACHE_SECONDS
        if seconds and seconds > 0:
            if len(_found_keys) >= _MAX_CACHED_KEYS:
                _found_keys.clear()
            _found_keys[hashed] = (time.monotonic() + seconds, key)
        return key


class ApiKey(models.Model):
    """A team's key for the FluxGate HTTP API. Only a hash of the secret is stored."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    hashed_key = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    may_charge_budgets = models.BooleanField(
        default=False,
        help_text=(
            "Events this key ingests with a cost of their own count towards the team's "
            "budgets. Off: only events FluxGate prices itself count."
        ),
    )
    may_read_metrics = models.BooleanField(
        default=False,
        help_text="This key may scrape fluxgate/metrics (its own team's figures).",
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "Models, MODELS aliases and route names (route:NAME) this key may call "
            "through the gateway; empty: all."
        ),
    )

    objects = ApiKeyManager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


models.signals.post_save.connect(
    forget_api_keys, sender=ApiKey, dispatch_uid="fluxgate-api-key-saved"
)
models.signals.post_delete.connect(
    forget_api_keys, sender=ApiKey, dispatch_uid="fluxgate-api-key-deleted"
)
