"""Exceptions FluxGate raises into callers on purpose.

::

    FluxGateError
    └── CallRefused                 the call was stopped before anything was sent
        ├── BudgetExceeded          a blocking budget (or a runaway block) refused it
        └── BudgetStoreUnavailable  the budget store could not be asked (fail closed)

``except BudgetExceeded`` catches budget refusals only; ``except CallRefused`` catches
every call FluxGate stopped, an unreachable budget store included.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class FluxGateError(Exception):
    """Base of every exception FluxGate raises on purpose."""


class CallRefused(FluxGateError):
    """FluxGate stopped the call before any provider request was sent."""

    def __init__(self, message: str, *, team: Any = None) -> None:
        super().__init__(message)
        self.team = team


class BudgetExceeded(CallRefused):
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
        super().__init__(message, team=team)
        self.budget = budget
        self.limit = limit
        self.spent = spent
        self.window = window


class BudgetStoreUnavailable(CallRefused):
    """The budget store (the database) could not be asked, and budgets fail closed."""
