"""Budgets, as one import for sites and tools: check-and-reserve before a call, settle
after it, across processes.

The work is done in layers (see ``docs/architecture.md``): :mod:`.periods` (windows),
:mod:`.ledger` (counters: reserve, settle, reconcile), :mod:`.estimate` (what a call may
cost) and :mod:`.guard` (check, reserve, refuse). This module only gathers their public
names; no module of FluxGate imports it.
"""

from __future__ import annotations

from .counters import settle_counters, settlement_for
from .estimate import CHARS_PER_TOKEN, estimate_cost, input_tokens_bound, max_output_tokens
from .guard import (
    BudgetGuard,
    Reservation,
    acheck_budget,
    charge_ingested,
    check_budget,
    might_apply,
)
from .ledger import (
    BudgetInfo,
    applicable_budgets,
    budgets_for_team,
    clear_cache,
    counter_ids,
    reconcile,
)
from .periods import window_bounds, window_end, window_start
from .teams import team_id_of

__all__ = [
    "CHARS_PER_TOKEN",
    "BudgetGuard",
    "BudgetInfo",
    "Reservation",
    "acheck_budget",
    "applicable_budgets",
    "budgets_for_team",
    "charge_ingested",
    "check_budget",
    "clear_cache",
    "counter_ids",
    "estimate_cost",
    "input_tokens_bound",
    "max_output_tokens",
    "might_apply",
    "reconcile",
    "settle_counters",
    "settlement_for",
    "team_id_of",
    "window_bounds",
    "window_end",
    "window_start",
]
