"""``manage.py fluxgate_budgets``: every budget's state in its current window."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ...ledger import reconcile
from ...models import Budget, SpendCounter, from_units
from ...periods import window_start


class Command(BaseCommand):
    help = "Print every budget's spend, reservations and limit for its current window."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--team", help="Only this team (slug).")
        parser.add_argument(
            "--reconcile",
            action="store_true",
            help="Recompute each current window's spend from its events first (after a "
            "database crash).",
        )
        parser.add_argument(
            "--release-reservations",
            action="store_true",
            help="With --reconcile: also free all in-flight reservations (only when no "
            "LLM call is running, e.g. after workers were killed mid-call).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        budgets = Budget.objects.select_related("team").order_by("team__name", "feature", "period")
        if options["team"]:
            budgets = budgets.filter(team__slug=options["team"])
        if options["reconcile"]:
            for budget in budgets:
                reconcile(budget, release_reservations=options["release_reservations"])
            self.stdout.write(f"Reconciled {len(budgets)} budgets from their events.")
        rows = []
        for budget in budgets:
            start = window_start(budget.period)
            counter = SpendCounter.objects.filter(budget=budget, window_start=start).first()
            spent = counter.spent if counter else from_units(0)
            reserved = counter.reserved if counter else from_units(0)
            percent = counter.percent_used if counter else 0
            rows.append(
                (
                    budget.team.slug,
                    budget.feature or "(all)",
                    budget.period,
                    str(start),
                    f"{spent:.4f}",
                    f"{reserved:.4f}",
                    f"{budget.limit_usd:.2f}",
                    f"{percent}%",
                    budget.action,
                )
            )
        header = (
            "team",
            "feature",
            "period",
            "window",
            "spent $",
            "reserved $",
            "limit $",
            "used",
            "action",
        )
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
        if not rows:
            self.stdout.write("No budgets.")
