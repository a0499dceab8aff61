"""FluxGate's multi-provider LLM service: routing, fallback, circuit breaking, caching."""

from .core import AllProvidersFailed, LLMService, classify
from .routing import STRATEGIES, set_strategy, strategy_for
from .types import Attempt, Completion, ServiceRequest

__all__ = [
    "STRATEGIES",
    "AllProvidersFailed",
    "Attempt",
    "Completion",
    "LLMService",
    "ServiceRequest",
    "classify",
    "set_strategy",
    "strategy_for",
]
