"""System checks (``manage.py check``) for the ``FLUXGATE`` setting, with stable ids.

* ``fluxgate.E001`` FLUXGATE is not a dict
* ``fluxgate.E002`` unknown recorder
* ``fluxgate.E003`` a model alias that does not resolve
* ``fluxgate.E004`` a route naming an unknown model, or with no models
* ``fluxgate.E005`` a route with an unknown strategy
* ``fluxgate.E006`` a bad number (batch size, flush interval, breaker, cache TTL...)
* ``fluxgate.E007`` RESPONSE_CACHE names a cache alias that is not in CACHES
* ``fluxgate.E008`` PROVIDERS is malformed
* ``fluxgate.E009`` the spool directory is another user's, or others can write to it
  (:mod:`.checks_spool`)
* ``fluxgate.E010`` SERVICE_CACHE_SCOPE is neither ``"team"`` nor ``"site"``
* ``fluxgate.E011`` FluxGate's models are routed to more than one database for writing
  (:mod:`.checks_databases`)
* ``fluxgate.E012`` an unknown key inside PROVIDERS.<name>, CIRCUIT_BREAKER,
  RESPONSE_CACHE, RUNAWAY_DETECTION or a route (:mod:`.checks_settings`, as E013-E015,
  W004 and W005)
* ``fluxgate.E013`` a non-boolean where True/False is meant (``BUDGET_FAIL_OPEN: "false"``)
* ``fluxgate.E014`` RETENTION_DAYS is negative or not a whole number
* ``fluxgate.E015`` UNKNOWN_TEAM is not ``"warn"``, ``"error"`` or ``"ignore"``
* ``fluxgate.E016`` AUTH_FAILURE_RATE is not a rate; ``fluxgate.E017``
  WEBHOOK_ALLOWED_HOSTS is not a list of strings; ``fluxgate.E018`` METRICS_ALLOWED_IPS
  is not a list of addresses or networks
* ``fluxgate.W001`` an unknown FLUXGATE key (probably a typo)
* ``fluxgate.W002``, ``fluxgate.W003`` Celery worker settings (:mod:`.checks_celery`)
* ``fluxgate.W004`` a model genai-prices has no price for (with the nearest names)
* ``fluxgate.W005`` a PROVIDERS name close to a built-in one, with no base_url
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import Error, Tags, Warning, register

from . import (
    checks_celery,  # noqa: F401  (registers the Celery worker settings checks)
    checks_databases,  # noqa: F401  (registers the database routing check, E011)
    checks_settings,  # noqa: F401  (registers the typo checks, E012-E018, W004-W005)
    checks_spool,  # noqa: F401  (registers the spool directory check, E009)
)
from .conf import DEFAULTS, RECORDER_ALIASES, fluxgate_settings
from .model_refs import UnknownModel, resolve_model

ROUTE_STRATEGIES = ("ordered", "cost", "latency", "round_robin", "priority")


def _error(msg: str, id: str, hint: str | None = None) -> Error:
    return Error(msg, hint=hint, obj="settings.FLUXGATE", id=id)


@register(Tags.compatibility)
def check_fluxgate_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.conf import settings

    raw = getattr(settings, "FLUXGATE", {})
    if not isinstance(raw, Mapping):
        return [_error("FLUXGATE must be a dict.", "fluxgate.E001")]
    errors: list[Any] = []
    for key in raw:
        if key not in DEFAULTS:
            errors.append(
                Warning(
                    f"Unknown FLUXGATE key {key!r}; it is ignored.",
                    hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                    obj="settings.FLUXGATE",
                    id="fluxgate.W001",
                )
            )
    errors += _check_recorder()
    errors += _check_providers()
    errors += _check_models_and_routes()
    errors += _check_numbers()
    errors += _check_cache()
    return errors


def _check_recorder() -> list[Any]:
    from django.utils.module_loading import import_string

    from .recording.base import BaseRecorder

    name = fluxgate_settings.RECORDER
    path = RECORDER_ALIASES.get(name, name)
    try:
        cls = import_string(path)
    except ImportError:
        hint = f"Use one of {', '.join(RECORDER_ALIASES)} or a dotted path to a BaseRecorder."
        if name in RECORDER_ALIASES:
            hint = f"The {name!r} recorder needs its extra installed, e.g. django-fluxgate[{name}]."
        return [_error(f"Unknown FluxGate recorder {name!r}.", "fluxgate.E002", hint)]
    if not (isinstance(cls, type) and issubclass(cls, BaseRecorder)):
        return [_error(f"FluxGate recorder {name!r} is not a BaseRecorder.", "fluxgate.E002")]
    if name == "celery":
        try:
            import celery  # noqa: F401
        except ImportError:
            return [
                _error(
                    "The 'celery' recorder needs Celery installed.",
                    "fluxgate.E002",
                    "pip install 'django-fluxgate[celery]' and configure a Celery app.",
                )
            ]
    return []


def _check_providers() -> list[Any]:
    providers = fluxgate_settings.PROVIDERS
    if not isinstance(providers, Mapping) or not all(
        isinstance(v, Mapping) for v in providers.values()
    ):
        return [
            _error(
                "FLUXGATE['PROVIDERS'] must map provider names to dicts of client options.",
                "fluxgate.E008",
            )
        ]
    return []


def _check_models_and_routes() -> list[Any]:
    errors: list[Any] = []
    aliases = fluxgate_settings.MODELS
    if not isinstance(aliases, Mapping):
        return [_error("FLUXGATE['MODELS'] must be a dict of alias -> model.", "fluxgate.E003")]
    for alias in aliases:
        try:
            resolve_model(alias, dict(aliases))
        except UnknownModel as exc:
            errors.append(_error(f"Model alias {alias!r}: {exc}", "fluxgate.E003"))
    routes = fluxgate_settings.ROUTES
    if not isinstance(routes, Mapping):
        return [*errors, _error("FLUXGATE['ROUTES'] must be a dict.", "fluxgate.E004")]
    for name, route in routes.items():
        if not isinstance(route, Mapping) or not route.get("models"):
            errors.append(_error(f"Route {name!r} has no 'models' list.", "fluxgate.E004"))
            continue
        for ref in route["models"]:
            try:
                resolve_model(ref, dict(aliases))
            except UnknownModel as exc:
                errors.append(
                    _error(
                        f"Route {name!r} names an unknown model {ref!r}: {exc}",
                        "fluxgate.E004",
                        "Add it to FLUXGATE['MODELS'] or write it as 'provider/model'.",
                    )
                )
        strategy = route.get("strategy", "ordered")
        if strategy not in ROUTE_STRATEGIES:
            errors.append(
                _error(
                    f"Route {name!r} has unknown strategy {strategy!r}.",
                    "fluxgate.E005",
                    f"Use one of {', '.join(ROUTE_STRATEGIES)}.",
                )
            )
    return errors


def _positive(value: Any, *, allow_zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 0 if allow_zero else value > 0


def _check_numbers() -> list[Any]:
    s = fluxgate_settings
    checks = [
        ("BATCH_SIZE", s.BATCH_SIZE, False),
        ("FLUSH_INTERVAL", s.FLUSH_INTERVAL, False),
        ("MAX_QUEUE_SIZE", s.MAX_QUEUE_SIZE, False),
        ("OVERFLOW_BUFFER_SIZE", s.OVERFLOW_BUFFER_SIZE, False),
        ("WRITER_THREADS", s.WRITER_THREADS, False),
        ("PRICE_CACHE_SECONDS", s.PRICE_CACHE_SECONDS, True),
        ("CIRCUIT_BREAKER['failures']", s.CIRCUIT_BREAKER.get("failures"), False),
        ("CIRCUIT_BREAKER['cooldown_seconds']", s.CIRCUIT_BREAKER.get("cooldown_seconds"), True),
        ("RESPONSE_CACHE['ttl']", s.RESPONSE_CACHE.get("ttl"), True),
        ("BUDGET_DEFAULT_OUTPUT_TOKENS", s.BUDGET_DEFAULT_OUTPUT_TOKENS, True),
        ("BUDGET_CACHE_SECONDS", s.BUDGET_CACHE_SECONDS, True),
        ("RUNAWAY_DETECTION['window_minutes']", s.RUNAWAY_DETECTION.get("window_minutes"), False),
        (
            "RUNAWAY_DETECTION['baseline_minutes']",
            s.RUNAWAY_DETECTION.get("baseline_minutes"),
            False,
        ),
        ("RUNAWAY_DETECTION['factor']", s.RUNAWAY_DETECTION.get("factor"), False),
        ("RUNAWAY_DETECTION['block_minutes']", s.RUNAWAY_DETECTION.get("block_minutes"), True),
    ]
    return [
        _error(
            f"FLUXGATE[{name!r}] must be a {'non-negative' if zero else 'positive'} number, "
            f"not {value!r}.",
            "fluxgate.E006",
        )
        for name, value, zero in checks
        if not _positive(value, allow_zero=zero)
    ]


def _check_cache() -> list[Any]:
    from django.conf import settings

    errors = []
    alias = fluxgate_settings.RESPONSE_CACHE.get("alias", "default")
    if alias not in getattr(settings, "CACHES", {"default": {}}):
        errors.append(
            _error(
                f"FLUXGATE['RESPONSE_CACHE']['alias'] is {alias!r}, which is not in CACHES.",
                "fluxgate.E007",
            )
        )
    scope = fluxgate_settings.SERVICE_CACHE_SCOPE
    if scope not in ("team", "site"):
        errors.append(
            _error(
                f"FLUXGATE['SERVICE_CACHE_SCOPE'] is {scope!r}.",
                "fluxgate.E010",
                'Use "team" (a cached answer serves only the team that got it) or "site" '
                "(shared by every team).",
            )
        )
    return errors
