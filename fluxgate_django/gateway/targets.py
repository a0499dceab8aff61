"""What a gateway call's ``model`` names, and whether the caller's key may use it.

* a provider's model name (``gpt-4o``, ``claude-sonnet-4-6``, ``openai/gpt-4o``) goes to
  that provider; a name FluxGate can't place (a fine-tuned ``ft:...`` model, a
  self-hosted one) goes to the provider of the protocol it was sent in, as it is;
* a ``FLUXGATE["MODELS"]`` alias resolves as the service resolves it (``model_refs``);
* ``route:NAME`` is a ``FLUXGATE["ROUTES"]`` route: its models in the order of its
  strategy (``service.routing.order_models``), tried one after another.

``ApiKey.allowed_models`` (empty: everything) lists model names, aliases and
``route:NAME`` entries. A model is allowed when it is listed, or when it is the model an
allowed name or alias stands for; a route only when it is listed itself.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..conf import fluxgate_settings
from ..estimate import max_output_tokens
from ..model_refs import ModelRef, UnknownModel, resolve_model
from ..models import ApiKey
from ..service import routing
from ..service.types import ServiceRequest
from .protocols import GatewayError

ROUTE_PREFIX = "route:"

#: Request keys holding what the model reads (their size orders a route by cost).
_PROMPT_KEYS = ("messages", "system", "input", "instructions", "prompt", "tools")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The models one call may go to, best first (one, unless it names a route)."""

    requested: str
    route: str | None
    candidates: tuple[ModelRef, ...]


def model_ref(name: str, default_provider: str) -> ModelRef:
    """Where ``name`` (a model or an alias) goes; one FluxGate can't place goes to
    ``default_provider`` as it is."""
    try:
        return resolve_model(name)
    except UnknownModel:
        if name in fluxgate_settings.MODELS:
            raise  # an alias that resolves to nothing is the site's mistake: say so
        return ModelRef(default_provider, name)


def may_use(key: ApiKey, requested: str, default_provider: str) -> bool:
    allowed = key.allowed_models or []
    if not allowed or requested in allowed:
        return True
    if requested.startswith(ROUTE_PREFIX):
        return False
    ref = model_ref(requested, default_provider)
    for entry in allowed:
        if isinstance(entry, str) and not entry.startswith(ROUTE_PREFIX):
            try:
                if model_ref(entry, default_provider) == ref:
                    return True
            except UnknownModel:
                continue
    return False


def resolve_target(
    key: ApiKey, requested: str, body: dict[str, Any], operation: str, default_provider: str
) -> Target:
    """The call's :class:`Target`, or a :class:`GatewayError`: 403 for a model the key
    may not use, 404 for one that names nothing. (May read the cache: off the loop.)"""
    try:
        allowed = may_use(key, requested, default_provider)
        if not allowed:
            raise GatewayError(
                403,
                "permission",
                f"FluxGate: this API key may not use model {requested!r} "
                f"(allowed: {', '.join(map(str, key.allowed_models))}).",
            )
        if requested.startswith(ROUTE_PREFIX):
            route = requested[len(ROUTE_PREFIX) :]
            if route not in fluxgate_settings.ROUTES:
                raise GatewayError(404, "not_found", f"FluxGate: no route named {route!r}.")
            refs = routing.order_models(route, None, _routing_request(body, operation))
            return Target(requested, route, tuple(refs))
        return Target(requested, None, (model_ref(requested, default_provider),))
    except UnknownModel as exc:
        raise GatewayError(404, "not_found", f"FluxGate: {exc}.") from exc


def _routing_request(body: dict[str, Any], operation: str) -> ServiceRequest:
    """What a route's strategy weighs (the prompt's size, the output cap) for ``body``."""
    prompt = json.dumps({k: body[k] for k in _PROMPT_KEYS if k in body}, default=str)
    return ServiceRequest(
        messages=({"role": "user", "content": prompt},),
        max_tokens=max_output_tokens(body, operation) or None,
    )


def listed_models(key: ApiKey) -> list[dict[str, Any]]:
    """``GET models``: what the key may use — its allowed names, or (none listed: every
    model) the site's aliases, routes and the models they name — in OpenAI's format."""
    names: list[str] = list(key.allowed_models or [])
    if not names:
        aliases = fluxgate_settings.MODELS
        routes = fluxgate_settings.ROUTES
        names = [*aliases, *(ROUTE_PREFIX + name for name in routes)]
        for ref in [*aliases.values(), *(r for c in routes.values() for r in c.get("models", []))]:
            try:
                model = resolve_model(ref).model
            except UnknownModel:
                continue
            if model not in names:
                names.append(model)
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": _owner(name)} for name in names
    ]


def _owner(name: str) -> str:
    if name.startswith(ROUTE_PREFIX) or name in fluxgate_settings.MODELS:
        return "fluxgate"
    try:
        return resolve_model(name).provider
    except UnknownModel:
        return "fluxgate"
