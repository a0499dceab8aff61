"""Exceptions FluxGate raises into callers on purpose."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class BudgetExceeded(Exception):
    """A blocking budget would be exceeded: raised before any provider request is sent."""

    def __init__(
        self,
        message: str,
        *,
        team: Any = None,
        budget: Any = None,
        limit: Decimal | None = None,
        spent: Decimal | None = None,
        window: Any = None,
    ) -> None:
        super().__init__(message)
        self.team = team
        self.budget = budget
        self.limit = limit
        self.spent = spent
        self.window = window


class BudgetStoreUnavailable(BudgetExceeded):
    """The budget store (the database) could not be asked, and budgets fail closed."""
