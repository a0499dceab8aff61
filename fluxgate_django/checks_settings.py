"""System checks for the typos in ``FLUXGATE`` that do damage quietly.

* ``fluxgate.E012`` an unknown key inside a nested setting: ``PROVIDERS.<name>``
  (``base_ulr`` sends the calls to the provider's real API), ``CIRCUIT_BREAKER``,
  ``RESPONSE_CACHE``, ``RUNAWAY_DETECTION`` (``enable`` leaves detection on), a route's
  options (``timout``)
* ``fluxgate.E013`` a string (or number) where ``True`` / ``False`` is meant:
  ``BUDGET_FAIL_OPEN: "false"`` is truthy, so budgets would fail open
* ``fluxgate.E014`` ``RETENTION_DAYS`` is not None or a non-negative whole number (a
  negative number puts the cutoff in the future: the retention task deletes every event)
* ``fluxgate.E015`` ``UNKNOWN_TEAM`` is not ``"warn"``, ``"error"`` or ``"ignore"``
* ``fluxgate.E016`` ``AUTH_FAILURE_RATE`` is not a rate (``"20/min"``) or None
* ``fluxgate.E017`` ``WEBHOOK_ALLOWED_HOSTS`` is not a list of strings
* ``fluxgate.E018`` ``METRICS_ALLOWED_IPS`` is not a list of addresses or networks
* ``fluxgate.W004`` a model (in ``MODELS`` or a route) that genai-prices has no price
  for, with the nearest names it knows: its calls would be recorded as unpriced
* ``fluxgate.W005`` a ``PROVIDERS`` entry whose name is close to a built-in provider's
  (``opneai``) with no ``base_url``: an OpenAI-compatible endpoint at OpenAI's own URL

Registered by :mod:`fluxgate_django.checks`. None of them queries the database.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any

from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS, fluxgate_settings
from .model_refs import KNOWN_PROVIDERS, ModelRef, UnknownModel, resolve_model
from .teams import UNKNOWN_TEAM_MODES

#: The options every ``PROVIDERS`` entry may have (what the tracked clients and the
#: service read: fluxgate_django/tracking/__init__.py, service/providers.py).
PROVIDER_OPTIONS = frozenset({"api_key", "base_url", "timeout", "max_retries", "type"})
#: Gemini's entry is also passed to ``google.genai.Client(...)`` by ``track_gemini()``.
GEMINI_CLIENT_OPTIONS = frozenset(
    {"vertexai", "credentials", "project", "location", "http_options", "debug_config"}
)
#: What a route may say (service/routing.py and service/run.py).
ROUTE_OPTIONS = frozenset(
    {"models", "strategy", "timeout", "small_request_chars", "small_request_tokens"}
)
#: The keys of the nested dicts (the breaker also reads these beyond its defaults).
NESTED_OPTIONS: dict[str, frozenset[str]] = {
    "CIRCUIT_BREAKER": frozenset({*DEFAULTS["CIRCUIT_BREAKER"], "window_seconds", "cache_alias"}),
    "RESPONSE_CACHE": frozenset(DEFAULTS["RESPONSE_CACHE"]),
    "RUNAWAY_DETECTION": frozenset(DEFAULTS["RUNAWAY_DETECTION"]),
}
#: Settings that are True or False, and nothing else.
#: Every True/False setting (from the defaults: a new one is checked without a list to keep).
BOOLEAN_SETTINGS = tuple(name for name, value in DEFAULTS.items() if isinstance(value, bool))

_OBJ = "settings.FLUXGATE"


def _error(msg: str, id: str, hint: str | None = None) -> Error:
    return Error(msg, hint=hint, obj=_OBJ, id=id)


def _nearest(word: str, choices: Any, n: int = 1) -> list[str]:
    return difflib.get_close_matches(str(word), sorted(map(str, choices)), n=n, cutoff=0.6)


def _did_you_mean(word: str, choices: Any) -> str:
    near = _nearest(word, choices)
    known = ", ".join(sorted(map(str, choices)))
    return (f"Did you mean {near[0]!r}? " if near else "") + f"Known keys: {known}."


@register(Tags.compatibility)
def check_settings_typos(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from django.conf import settings

    raw = getattr(settings, "FLUXGATE", {})
    if not isinstance(raw, Mapping):
        return []  # fluxgate.E001 says so
    return [
        *_check_nested_keys(raw),
        *_check_booleans(raw),
        *_check_retention(raw),
        *_check_unknown_team(raw),
        *_check_webhook_and_auth_settings(raw),
        *_check_provider_names(raw),
        *_check_priced_models(raw),
    ]


# -- nested keys ---------------------------------------------------------------------------


def _check_nested_keys(raw: Mapping[str, Any]) -> Iterator[Any]:
    for name, allowed in NESTED_OPTIONS.items():
        value = raw.get(name)
        if not isinstance(value, Mapping):
            continue
        for key in value:
            if key not in allowed:
                yield _error(
                    f"Unknown key {key!r} in FLUXGATE[{name!r}]; it is ignored.",
                    "fluxgate.E012",
                    _did_you_mean(key, allowed),
                )
    providers = raw.get("PROVIDERS")
    if isinstance(providers, Mapping):
        for provider, options in providers.items():
            if not isinstance(options, Mapping):
                continue  # fluxgate.E008
            allowed = PROVIDER_OPTIONS | (
                GEMINI_CLIENT_OPTIONS if _kind(provider, options) == "gemini" else frozenset()
            )
            for key in options:
                if key not in allowed:
                    danger = (
                        " Without 'base_url' the calls go to the provider's own API."
                        if "base_url" not in options and _nearest(key, ["base_url"])
                        else ""
                    )
                    yield _error(
                        f"Unknown option {key!r} in FLUXGATE['PROVIDERS'][{provider!r}]; it "
                        f"is ignored.{danger}",
                        "fluxgate.E012",
                        _did_you_mean(key, allowed),
                    )
    routes = raw.get("ROUTES")
    if isinstance(routes, Mapping):
        for route, options in routes.items():
            if not isinstance(options, Mapping):
                continue  # fluxgate.E004
            for key in options:
                if key not in ROUTE_OPTIONS:
                    yield _error(
                        f"Unknown option {key!r} in route {route!r} of FLUXGATE['ROUTES']; "
                        "it is ignored.",
                        "fluxgate.E012",
                        _did_you_mean(key, ROUTE_OPTIONS),
                    )


def _kind(name: str, options: Mapping[str, Any]) -> str:
    kind = options.get("type")
    if isinstance(kind, str) and kind:
        return kind
    return name if name in KNOWN_PROVIDERS else "openai"


# -- values --------------------------------------------------------------------------------


def _check_booleans(raw: Mapping[str, Any]) -> Iterator[Any]:
    values = [(f"FLUXGATE[{name!r}]", raw[name]) for name in BOOLEAN_SETTINGS if name in raw]
    runaway = raw.get("RUNAWAY_DETECTION")
    if isinstance(runaway, Mapping) and "enabled" in runaway:
        values.append(("FLUXGATE['RUNAWAY_DETECTION']['enabled']", runaway["enabled"]))
    for name, value in values:
        if not isinstance(value, bool):
            truth = "true" if value else "false"
            yield _error(
                f"{name} must be True or False, not {value!r} (which Python reads as {truth}).",
                "fluxgate.E013",
                "Write the Python constant True or False, without quotes. To read it from "
                "the environment: os.environ.get('NAME', '').lower() in ('1', 'true', 'yes').",
            )


def _check_retention(raw: Mapping[str, Any]) -> Iterator[Any]:
    days = raw.get("RETENTION_DAYS")
    if days is None:
        return
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        yield _error(
            f"FLUXGATE['RETENTION_DAYS'] must be None or a whole number of days (0 or more), "
            f"not {days!r}.",
            "fluxgate.E014",
            "A negative number (or a string such as '-5') puts the cutoff in the future: the "
            "retention task would delete every event. None (the default) keeps them all.",
        )


def _check_unknown_team(raw: Mapping[str, Any]) -> Iterator[Any]:
    mode = raw.get("UNKNOWN_TEAM", "warn")
    if mode not in UNKNOWN_TEAM_MODES:
        yield _error(
            f"FLUXGATE['UNKNOWN_TEAM'] is {mode!r}.",
            "fluxgate.E015",
            'Use "warn" (the default: log each unknown team slug once), "ignore", or '
            '"error" (test suites only: a call naming an unknown team is refused).',
        )


def _check_webhook_and_auth_settings(raw: Mapping[str, Any]) -> Iterator[Any]:
    from .api.throttling import parse_rate

    if "AUTH_FAILURE_RATE" in raw:
        try:
            parse_rate(raw["AUTH_FAILURE_RATE"])
        except ValueError as exc:
            yield _error(
                str(exc),
                "fluxgate.E016",
                "FLUXGATE['AUTH_FAILURE_RATE'] is failed API-key authentications per client "
                "address: 'N/s', 'N/min', 'N/hour' or 'N/day', or None (no limit). A bad "
                "value would fail every API request.",
            )
    hosts = raw.get("WEBHOOK_ALLOWED_HOSTS", [])
    if not isinstance(hosts, list | tuple) or not all(isinstance(h, str) for h in hosts):
        yield _error(
            f"FLUXGATE['WEBHOOK_ALLOWED_HOSTS'] is {hosts!r}.",
            "fluxgate.E017",
            'A list of host names (".internal" for every name under it), addresses or '
            'networks ("10.1.0.0/16").',
        )
    scrapers = raw.get("METRICS_ALLOWED_IPS", [])
    bad = [scrapers] if not isinstance(scrapers, list | tuple) else []
    for entry in [] if bad else scrapers:
        try:
            ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            bad.append(entry)
    if bad:
        yield _error(
            f"FLUXGATE['METRICS_ALLOWED_IPS'] holds {bad[0]!r}, not an address or network.",
            "fluxgate.E018",
            'A list of the addresses or networks of Prometheus scrapers ("10.0.0.5", '
            '"10.1.0.0/16") that may read fluxgate/metrics without signing in.',
        )


def _check_provider_names(raw: Mapping[str, Any]) -> Iterator[Any]:
    providers = raw.get("PROVIDERS")
    if not isinstance(providers, Mapping):
        return
    for name, options in providers.items():
        if name in KNOWN_PROVIDERS or not isinstance(options, Mapping):
            continue
        near = _nearest(name, KNOWN_PROVIDERS)
        if near and not options.get("base_url") and not options.get("type"):
            yield Warning(
                f"FLUXGATE['PROVIDERS'] has {name!r}, which is not a built-in provider: it "
                "is taken as an OpenAI-compatible endpoint, and has no 'base_url'.",
                hint=f"Did you mean {near[0]!r}? A custom endpoint needs a 'base_url'.",
                obj=_OBJ,
                id="fluxgate.W005",
            )


# -- models the price data knows -----------------------------------------------------------


def _check_priced_models(raw: Mapping[str, Any]) -> Iterator[Any]:
    aliases = fluxgate_settings.MODELS
    if not isinstance(aliases, Mapping):
        return
    aliases = dict(aliases)
    refs: dict[ModelRef, str] = {}
    for alias in aliases:
        where = f"model alias {alias!r}"
        ref = _resolved(alias, aliases)
        if ref is not None:
            refs.setdefault(ref, where)
    routes = fluxgate_settings.ROUTES
    if isinstance(routes, Mapping):
        for route, options in routes.items():
            models = options.get("models") if isinstance(options, Mapping) else None
            if not isinstance(models, (list, tuple)):
                continue
            for model in models:
                ref = _resolved(model, aliases)
                if ref is not None:
                    refs.setdefault(ref, f"route {route!r}")
    for ref, where in refs.items():
        known = _price_data_knows(ref)
        if known is None or known[0]:
            continue
        near = ", ".join(repr(f"{ref.provider}/{n}") for n in known[1])
        yield Warning(
            f"No price data for model {str(ref)!r} ({where}): its calls would be recorded "
            "as unpriced (cost unknown).",
            hint=(
                (f"Did you mean {near}? " if near else "")
                + "If the name is right (a new, fine-tuned or self-hosted model), give it a "
                "price with a ModelPrice row in the admin and add 'fluxgate.W004' to "
                "SILENCED_SYSTEM_CHECKS."
            ),
            obj=_OBJ,
            id="fluxgate.W004",
        )


def _resolved(ref: Any, aliases: dict[str, str]) -> ModelRef | None:
    if not isinstance(ref, str):
        return None
    try:
        return resolve_model(ref, aliases)
    except (UnknownModel, TypeError):
        return None  # fluxgate.E003 / E004 say so


def _price_data_knows(ref: ModelRef) -> tuple[bool, list[str]] | None:
    """``(known, nearest model ids)`` in genai-prices' data, looked up as ``pricing``
    looks a call's price up (by the provider's name), or None when the data has no such
    provider (a self-hosted endpoint: nothing to compare with)."""
    from genai_prices import data_snapshot

    from .pricing import GENAI_PROVIDER_IDS

    snapshot = data_snapshot.get_snapshot()
    try:
        provider = snapshot.find_provider(
            None, GENAI_PROVIDER_IDS.get(ref.provider, ref.provider), None
        )
    except LookupError:
        return None
    try:
        snapshot.find_provider_model(ref.model, provider, None, None)
    except LookupError:
        ids = [m.id for m in provider.models]
        return False, difflib.get_close_matches(ref.model, ids, n=3, cutoff=0.6)
    return True, []
