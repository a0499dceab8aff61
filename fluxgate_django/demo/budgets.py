"""The demo's budgets: one per team, sized from what the team has spent in the window so
far, so that the admin shows one comfortable budget, one near its limit (its alert
raised) and one over it (alerts raised, and a call refused before it is sent).

A budget created here starts from its window's existing spend, as any budget created
late does (``ledger.open_current_window``), and raises the thresholds it is already past.
Budgets that exist already are left as they are (they may have been edited).
"""

from __future__ import annotations

import dataclasses
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from .. import BudgetExceeded, track_openai, tracking_context
from ..ledger import window_spend
from ..models import Budget, BudgetAlert, SpendCounter, Team
from ..periods import window_start

MINIMUM_LIMIT = Decimal("0.000001")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A demo budget: its team, period and action, and the share of its limit that the
    window's spend so far should be when it is created."""

    team: str
    period: str
    action: str
    used: Decimal  # e.g. 0.9: the spend so far is 90 % of the limit
    rounding: str  # round the limit up (stays under) or down (goes over)


PLANS = (
    Plan("search", "day", Budget.Action.ALERT, Decimal("0.35"), ROUND_CEILING),
    Plan("support", "month", Budget.Action.BLOCK, Decimal("0.9"), ROUND_CEILING),
    Plan("growth", "month", Budget.Action.BLOCK, Decimal("1.25"), ROUND_FLOOR),
)


@dataclasses.dataclass
class BudgetState:
    """One budget as the demo prints it."""

    team: str
    period: str
    action: str
    spent: Decimal
    limit: Decimal
    percent: Decimal
    alerts: list[int]
    created: bool


def _limit_for(spent: Decimal, plan: Plan) -> Decimal:
    """``spent / plan.used`` to two significant digits, rounded the plan's way."""
    if spent <= 0:
        return Decimal("1.00")
    raw = spent / plan.used
    exponent = raw.adjusted() - 1  # two significant digits
    step = Decimal(1).scaleb(exponent)
    limit = (raw / step).quantize(Decimal(1), rounding=plan.rounding) * step
    limit = max(limit.quantize(MINIMUM_LIMIT, rounding=plan.rounding), MINIMUM_LIMIT)
    # A budget meant to stay under its limit: at least a cent (a run of a few calls).
    return max(limit, Decimal("0.01")) if plan.rounding == ROUND_CEILING else limit


def create_budgets() -> list[BudgetState]:
    """The demo budgets (created when missing) and their state in the current window."""
    states = []
    for plan in PLANS:
        team = Team.objects.get(slug=plan.team)
        budget = Budget.objects.filter(team=team, feature="", period=plan.period).first()
        created = budget is None
        if budget is None:
            probe = Budget(team=team, period=plan.period)
            spent = window_spend(probe, window_start(plan.period))
            budget = Budget.objects.create(
                team=team,
                period=plan.period,
                action=plan.action,
                limit_usd=_limit_for(spent, plan),
                alert_threshold_percent=80,
            )
        states.append(budget_state(budget, created=created))
    return states


def budget_state(budget: Budget, *, created: bool = False) -> BudgetState:
    start = window_start(budget.period)
    counter = SpendCounter.objects.filter(budget=budget, window_start=start).first()
    alerts = sorted(
        BudgetAlert.objects.filter(budget=budget, window_start=start).values_list(
            "threshold_percent", flat=True
        )
    )
    return BudgetState(
        team=budget.team.slug,
        period=budget.period,
        action=budget.action,
        spent=counter.spent if counter else Decimal(0),
        limit=budget.limit_usd,
        percent=counter.percent_used if counter else Decimal(0),
        alerts=alerts,
        created=created,
    )


def try_over_budget_call(base_url: str, team: str = "growth") -> str:
    """A chat call of ``team``: refused before it is sent if its budget is exhausted.
    Returns what happened, as a line for the demo's output."""
    import openai

    client: Any = track_openai(
        openai.OpenAI(api_key="sk-fluxgate-demo", base_url=f"{base_url}/v1", max_retries=0)
    )
    user = {"id": "cust_001", "email": "customer1@example.org"}
    with tracking_context(feature="chat", team=team, user=user, tags=["demo"]):
        try:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "One more question..."}],
                max_tokens=200,
            )
        except BudgetExceeded as exc:
            return f"A {team} chat call was refused before it was sent: {exc}"
        except openai.APIError as exc:
            return f"A {team} chat call failed: {type(exc).__name__}"
    return f"A {team} chat call was allowed (its budget is not exhausted)."


def format_budgets(states: list[BudgetState]) -> str:
    header = ("team", "period", "spent", "limit", "used", "action", "alerts")
    rows = [
        (
            s.team,
            s.period,
            f"${s.spent.quantize(Decimal('0.000001'))}",
            f"${s.limit.normalize():f}",
            f"{s.percent}%",
            s.action,
            ", ".join(f"{t}%" for t in s.alerts) or "-",
        )
        for s in states
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    rule = "  ".join("-" * w for w in widths)
    return "\n".join(["Budgets (current window)", lines[0], rule, *lines[1:]])
