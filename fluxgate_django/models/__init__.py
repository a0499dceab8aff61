"""FluxGate's tables: teams and their keys, budgets, price overrides, LLM call events and
their rollups (one module each)."""

from ..money import from_units, to_units
from .budgets import Budget, BudgetAlert, SettlementToken, SpendAnomaly, SpendCounter
from .dead_letters import DeadLetter
from .events import Event, EventQuerySet, ModelPrice
from .fields import COST_FIELD, PRICE_FIELD
from .rollups import CostReport, EndUserUsageRollup, RollupBase, UsageRollup
from .teams import KEY_PREFIX, ApiKey, ApiKeyManager, Team, TeamMembership, hash_secret

__all__ = [
    "COST_FIELD",
    "KEY_PREFIX",
    "PRICE_FIELD",
    "ApiKey",
    "ApiKeyManager",
    "Budget",
    "BudgetAlert",
    "CostReport",
    "DeadLetter",
    "EndUserUsageRollup",
    "Event",
    "EventQuerySet",
    "ModelPrice",
    "RollupBase",
    "SettlementToken",
    "SpendAnomaly",
    "SpendCounter",
    "Team",
    "TeamMembership",
    "UsageRollup",
    "from_units",
    "hash_secret",
    "to_units",
]
