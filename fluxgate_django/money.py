"""Money as integers: units of 1e-10 USD, the precision of ``Event.cost_usd``.

Budget counters and report rollups add money as integers so that a conditional UPDATE is
exact on every database. One rounding rule everywhere: half away from zero at the tenth
decimal, which is what a ``numeric(20, 10)`` column does to a stored cost — so a
counter's spend equals the sum of its stored events' costs.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

#: One unit of money: 1e-10 USD.
MONEY_UNIT = Decimal("1e-10")
#: The most one event may cost: a budget counter (a 64-bit count of units) holds about
#: $922M, so a single client-given cost can't overflow it (nor a month of them).
MAX_EVENT_COST_USD = Decimal(1_000_000)


def to_units(amount: Any) -> int:
    """USD (a ``Decimal``, or anything ``Decimal(str(x))`` reads) → integer units."""
    if not isinstance(amount, Decimal):
        amount = Decimal(str(amount))
    return int(amount.quantize(MONEY_UNIT, rounding=ROUND_HALF_UP).scaleb(10))


def from_units(units: int) -> Decimal:
    """Integer units → USD."""
    return (Decimal(units) * MONEY_UNIT).normalize() if units else Decimal(0)
