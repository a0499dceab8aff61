"""FluxGate settings: one ``FLUXGATE`` dict in Django settings, read through this module.

Modelled on DRF's ``api_settings``: defaults live here (never written onto
``django.conf.settings``), values are read lazily (importing this module needs no
configured Django), cached, and reloaded on Django's ``setting_changed`` signal so
``override_settings(FLUXGATE=...)`` works in tests.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

#: Every key FluxGate understands, with its default. Documented in the README.
DEFAULTS: dict[str, Any] = {
    # "sync" | "thread" | "celery", or a dotted path to a BaseRecorder subclass.
    "RECORDER": "thread",
    # Store prompts and completions on events (off: only counts, cost and metadata).
    "STORE_CONTENT": False,
    # Each call is also an OpenTelemetry span when opentelemetry-api is installed and a
    # tracer provider is configured (False: never).
    "OPENTELEMETRY": True,
    # Addresses (or CIDR networks) of Prometheus scrapers that may read fluxgate/metrics
    # without signing in (they see the whole site).
    "METRICS_ALLOWED_IPS": [],
    # If the budget store is unreachable: block the call (False) or allow it (True).
    "BUDGET_FAIL_OPEN": False,
    # Client options per provider.
    "PROVIDERS": {
        "openai": {"api_key": None, "base_url": None, "timeout": 30},
        "anthropic": {"api_key": None, "base_url": None, "timeout": 30},
        "gemini": {"api_key": None},
    },
    # Optional model aliases: {"fast": "openai/gpt-4o-mini"}.
    "MODELS": {},
    # LLMService routes: {"summarize": {"strategy": "ordered", "models": [...]}}.
    "ROUTES": {},
    "CIRCUIT_BREAKER": {"failures": 3, "cooldown_seconds": 300},
    "RESPONSE_CACHE": {"alias": "default", "ttl": 3600},
    # Whose calls a cached LLMService answer may serve: "team" (only the team that got
    # it; calls with no team share among themselves) or "site" (every team: the same
    # request gets the same answer whoever asks). A hit is recorded for the caller's team.
    "SERVICE_CACHE_SCOPE": "team",
    # Thread/Celery recorders: write (or send) a batch when this many events are queued
    # (one transaction, or one task, per batch; see "Running at scale" in the README) ...
    "BATCH_SIZE": 2000,
    # ... or this many seconds after the oldest queued event.
    "FLUSH_INTERVAL": 1.0,
    # Thread recorder: writer threads (each with a database connection of its own). Two
    # overlap one batch's Python work with the database's work on another. SQLite: one.
    "WRITER_THREADS": 2,
    # Events held in memory at most; past this the recorder writes to the spool ...
    "MAX_QUEUE_SIZE": 100_000,
    # ... through a buffer of this many events, spooled in batches by a thread of its own
    # (never by the caller). Past it (the disk can't keep up), events are dropped, logged.
    "OVERFLOW_BUFFER_SIZE": 100_000,
    # Journal every event (a copy into a memory-mapped file, no fsync) before the tracked
    # call returns, so a process killed with events still queued loses none: the next
    # process recovers them.
    "JOURNAL": True,
    # The site's private directory for the spool (events the database could not take,
    # JSON lines with a MAC) and the journal; created 0700. None: <BASE_DIR>/var/fluxgate
    # if the project directory is writable, else a directory in the system temp directory
    # named by a key derived from SECRET_KEY (see recording/private.py).
    "SPOOL_DIR": None,
    # The spool's size limit in bytes (all its files together). Past it, events are
    # dropped with an error logged (counted in ``recording.spool.dropped``), so that a
    # long outage cannot fill the disk.
    "SPOOL_MAX_BYTES": 512 * 1024 * 1024,
    # Celery recorder: the site's Celery app as a dotted path ("proj.celery.app"). None:
    # the app Celery calls current (see recording/celery.py for how it is found).
    "CELERY_APP": None,
    # How long ModelPrice overrides are cached in a process before re-reading them.
    "PRICE_CACHE_SECONDS": 60,
    # Cost multipliers for provider service tiers that genai-prices does not model.
    "SERVICE_TIER_MULTIPLIERS": {"batch": "0.5", "flex": "0.5"},
    # Budgets: output tokens assumed for a call that sets no max_tokens, when reserving.
    "BUDGET_DEFAULT_OUTPUT_TOKENS": 1024,
    # How long a process caches a team's budget list (other processes' edits show after).
    "BUDGET_CACHE_SECONDS": 5,
    # How long a process keeps an API key it found (a key revoked or deleted in another
    # process is refused there after at most this long; in this one at once). 0: no cache.
    "API_KEY_CACHE_SECONDS": 5,
    # Runaway detection: spend over the last `window_minutes` above `factor` times the
    # average per window over the previous `baseline_minutes` (and at least
    # `min_spend_usd`) fires `spend_anomaly_detected`; `block_minutes` > 0 also blocks the
    # feature (or team) for that long. State is shared through the cache `cache_alias`.
    "RUNAWAY_DETECTION": {
        "enabled": True,
        "window_minutes": 5,
        "baseline_minutes": 60,
        "factor": 5,
        "min_spend_usd": "1.00",
        "block_minutes": 0,
        "cache_alias": "default",
    },
    # A stream nobody has read for this many seconds (a caller that stopped half-way and
    # dropped it without close()) is recorded as not completed and its budget reservation
    # settled, instead of when it is garbage-collected. None or 0: not on a timer (still on
    # close, at the end of the request that started it, and on collection).
    "STREAM_IDLE_TIMEOUT": 60,
    # Delete events older than this many days (periodic task; rollups are kept). None: never.
    "RETENTION_DAYS": None,
    # Budget alert e-mails: sender (None: DEFAULT_FROM_EMAIL) and webhook timeout.
    "ALERT_FROM_EMAIL": None,
    "ALERT_WEBHOOK_TIMEOUT": 5,
    # Budget webhooks (fluxgate_django/webhooks.py): https only unless this is True ...
    "WEBHOOK_ALLOW_HTTP": False,
    # ... and only to public addresses, except these hosts: names ("hooks.internal", or
    # ".internal" for every name under it), addresses or CIDR networks ("10.1.0.0/16").
    "WEBHOOK_ALLOWED_HOSTS": [],
    # The key webhook bodies are signed with (X-FluxGate-Signature). None: derived from
    # SECRET_KEY (see webhooks.site_secret()).
    "WEBHOOK_SECRET": None,
    # Failed API-key authentications allowed per client address, then 429 with
    # Retry-After until the window ends ("N/s", "N/min", "N/hour", "N/day"; None: off).
    "AUTH_FAILURE_RATE": "20/min",
    # A call whose context names a team slug no Team has is recorded without a team.
    # "warn": log a warning (logger "fluxgate") once per slug and process; "ignore": say
    # nothing; "error": refuse the call with fluxgate_django.teams.UnknownTeam (a
    # CallRefused) before anything is sent. "error" is for test suites: never in
    # production, where a typo must not break the site's LLM calls.
    "UNKNOWN_TEAM": "warn",
    # Re-raise FluxGate's own internal errors instead of logging them. Never turn this
    # on in production: it exists so the test suite sees bookkeeping bugs.
    "RAISE_ERRORS": False,
}

#: Keys whose values are dicts merged key by key onto the defaults.
MERGED_DICT_KEYS = (
    "CIRCUIT_BREAKER",
    "RESPONSE_CACHE",
    "SERVICE_TIER_MULTIPLIERS",
    "RUNAWAY_DETECTION",
)

RECORDER_ALIASES = {
    "sync": "fluxgate_django.recording.sync.SyncRecorder",
    "thread": "fluxgate_django.recording.thread.ThreadRecorder",
    "celery": "fluxgate_django.recording.celery.CeleryRecorder",
}


class FluxGateSettings:
    """Attribute access to the merged ``FLUXGATE`` settings: ``fluxgate_settings.RECORDER``."""

    def __init__(self, user_settings: Mapping[str, Any] | None = None) -> None:
        self._explicit = user_settings
        self._cached: dict[str, Any] = {}

    @property
    def user_settings(self) -> Mapping[str, Any]:
        if self._explicit is not None:
            return self._explicit
        from django.conf import settings

        return getattr(settings, "FLUXGATE", None) or {}

    def __getattr__(self, key: str) -> Any:
        if key not in DEFAULTS:
            raise AttributeError(f"Unknown FluxGate setting: {key!r}")
        try:
            return self._cached[key]
        except KeyError:
            pass
        value = self._resolve(key)
        self._cached[key] = value
        return value

    def _resolve(self, key: str) -> Any:
        default = DEFAULTS[key]
        user = self.user_settings
        if key not in user:
            return copy.deepcopy(default)
        value = user[key]
        if key in MERGED_DICT_KEYS and isinstance(value, Mapping):
            return {**default, **value}
        if key == "PROVIDERS" and isinstance(value, Mapping):
            merged = copy.deepcopy(default)
            for name, options in value.items():
                if options is not None and not isinstance(options, Mapping):
                    return value  # malformed: left as is for system check fluxgate.E008
                merged[name] = {**merged.get(name, {}), **(options or {})}
            return merged
        return value

    def reload(self) -> None:
        self._cached.clear()


fluxgate_settings = FluxGateSettings()

_reload_hooks: list = []


def on_reload(func):  # type: ignore[no-untyped-def]
    """Register ``func()`` to run whenever the FLUXGATE setting changes (memoised state)."""
    _reload_hooks.append(func)
    return func


@receiver(setting_changed)
def _reload_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "FLUXGATE":
        fluxgate_settings.reload()
        for hook in _reload_hooks:
            hook()
