"""FluxGate for Django: LLM cost control as a Django app.

Public API (imported lazily, so ``import fluxgate_django`` needs no configured Django)::

    from fluxgate_django import (track_openai, track_anthropic, track_gemini,
                                 tracking_context, current_context, BudgetExceeded,
                                 CallRefused,
                                 LLMService, flush)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import current_context, tracking_context
    from .exceptions import BudgetExceeded, BudgetStoreUnavailable, CallRefused, FluxGateError
    from .recording import flush
    from .records import Status, TrackingResult
    from .service import LLMService
    from .tracking import track_anthropic, track_gemini, track_openai

__all__ = [
    "BudgetExceeded",
    "BudgetStoreUnavailable",
    "CallRefused",
    "FluxGateError",
    "LLMService",
    "Status",
    "TrackingResult",
    "current_context",
    "flush",
    "track_anthropic",
    "track_gemini",
    "track_openai",
    "tracking_context",
]

_EXPORTS = {
    "track_openai": ".tracking",
    "track_anthropic": ".tracking",
    "track_gemini": ".tracking",
    "tracking_context": ".context",
    "current_context": ".context",
    "BudgetExceeded": ".exceptions",
    "BudgetStoreUnavailable": ".exceptions",
    "CallRefused": ".exceptions",
    "FluxGateError": ".exceptions",
    "LLMService": ".service",
    "Status": ".records",
    "TrackingResult": ".records",
    "flush": ".recording",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fluxgate_django' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
