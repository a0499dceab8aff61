"""``manage.py fluxgate_demo``: a realistic LLM workload against a fake provider, then a
cost table by feature computed from the recorded ``Event`` rows.

Real ``openai.OpenAI`` and ``anthropic.Anthropic`` clients, wrapped with
``track_openai`` / ``track_anthropic``, talk HTTP to a loopback :class:`FakeProvider`
(started in-process, or a running one with ``--fake-url``), so nothing is spent. The
workload covers several features, teams and users; streams; prompt-cache reads and
writes; reasoning tokens; embeddings; provider errors (500 and 429) that are caught; and
a self-hosted model FluxGate has no price for (shown as "unpriced", never as $0).

Before it, 30 days of history (``--days``) through the same record builder and recorder,
with past timestamps, so that the report has a month to show; after it, a budget per team
(one near its limit, one over it: their alerts are raised) and a call that the over-budget
team's budget refuses.

Also creates the teams, a few demo users and an ``admin`` superuser (password ``admin``)
if it does not exist yet, so the admin can be browsed afterwards. Works with any user
model (a custom one without an e-mail field, or logging in by e-mail, too).

The workload itself is in :mod:`fluxgate_django.demo`; this command parses the options,
checks the database, runs it and prints the result.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, router

from fluxgate_django import flush
from fluxgate_django.alerts import wait_for_notifications
from fluxgate_django.demo.budgets import format_budgets
from fluxgate_django.demo.gateway import format_gateway
from fluxgate_django.demo.report import FeatureCost, cost_by_feature, format_cost_table
from fluxgate_django.demo.runner import DemoError, run_demo
from fluxgate_django.demo.users import ADMIN_PASSWORD, DemoUserError, admin_login
from fluxgate_django.demo.workload import SELF_HOSTED_MODEL
from fluxgate_django.models import Event

# FeatureCost, SELF_HOSTED_MODEL and format_cost_table are importable from here as before.
__all__ = ["SELF_HOSTED_MODEL", "Command", "FeatureCost", "format_cost_table"]


class Command(BaseCommand):
    help = (
        "Drive a demo LLM workload through tracked OpenAI/Anthropic clients against a "
        "fake provider and print the cost by feature."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--calls", type=int, default=60, help="number of LLM calls to make (default 60)"
        )
        parser.add_argument(
            "--fake-url",
            help="use a running fake provider (python -m fluxgate_django.testing.fake_provider) "
            "instead of starting one; its replies cannot be scripted, so no errors are injected",
        )
        parser.add_argument(
            "--no-input",
            "--noinput",
            action="store_true",
            dest="no_input",
            help="do not ask for confirmation",
        )
        parser.add_argument(
            "--days",
            type=int,
            default=30,
            help="days of history to seed before today (default 30; days seeded by an "
            "earlier run are not seeded again; 0: none)",
        )
        parser.add_argument(
            "--no-budgets",
            action="store_false",
            dest="budgets",
            help="do not create the demo budgets (nor make the call they refuse)",
        )
        parser.add_argument("--seed", type=int, default=7, help="random seed of the workload")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            import anthropic  # noqa: F401
            import openai  # noqa: F401
        except ImportError as exc:
            raise CommandError(
                "The demo needs the SDKs: pip install 'django-fluxgate[openai,anthropic]'"
            ) from exc
        calls = options["calls"]
        self.verbosity = options["verbosity"]
        if calls < 1:
            raise CommandError("--calls must be at least 1")
        if options["days"] < 0:
            raise CommandError("--days must not be negative")
        self._check_migrated()
        if not options["no_input"] and sys.stdin.isatty() and not self._confirm(calls):
            self.stdout.write("Cancelled.")
            return

        try:
            run = run_demo(
                calls,
                seed=options["seed"],
                fake_url=options["fake_url"],
                days=options["days"],
                budgets=options["budgets"],
                log=self.stdout.write if self.verbosity >= 2 else None,
            )
        except (DemoError, DemoUserError) as exc:
            raise CommandError(str(exc)) from exc

        if not flush(timeout=30):
            self.stderr.write("FluxGate did not finish writing events within 30 s.")
        wait_for_notifications(timeout=10)
        refused = f", {run.refused} refused by a budget" if run.refused else ""
        if run.history is not None:
            seeded = (
                f"{run.history.events} past calls over {run.history.days} days"
                if run.history.days
                else "no new past calls"
            )
            before = (
                f" ({run.history.skipped} days were seeded by an earlier run)"
                if run.history.skipped
                else ""
            )
            self.stdout.write(f"\nHistory: {seeded}{before}.")
        self.stdout.write(
            f"\n{run.calls} LLM calls made ({run.caught} provider errors caught{refused}), plus "
            f"{run.routed} through LLMService routes (summarize, code-review, chat, "
            f"translation, with a fallback and an A/B test), run {run.run_id}.\n"
        )
        if run.gateway is not None:
            self.stdout.write("\n" + format_gateway(run.gateway) + "\n\n")
        self.stdout.write(format_cost_table(cost_by_feature(run.run_id)))
        if run.budgets:
            self.stdout.write("\n" + format_budgets(run.budgets))
        if run.refusal:
            self.stdout.write(run.refusal)
        self._print_admin_hint(run.admin_created)

    def _check_migrated(self) -> None:
        connection = connections[router.db_for_write(Event)]
        if Event._meta.db_table not in connection.introspection.table_names():
            raise CommandError("FluxGate's tables are missing: run `manage.py migrate` first.")

    def _confirm(self, calls: int) -> bool:
        name = connections[router.db_for_write(Event)].settings_dict["NAME"]
        answer = input(
            f"This adds demo teams, users (and an '{admin_login()}' superuser if missing), "
            f"budgets, a month of past events and {calls} demo calls to database {name!s}. "
            "Continue? [y/N] "
        )
        return answer.strip().lower() in ("y", "yes")

    def _print_admin_hint(self, admin_created: bool) -> None:
        if admin_created:
            login = f"{admin_login()} / {ADMIN_PASSWORD} (just created)"
        else:
            login = f"{admin_login()} (existing user, password unchanged)"
        self.stdout.write(
            f"\nAdmin login: {login}\nEvents: /admin/fluxgate_django/event/\n"
            "Cost report: /admin/fluxgate_django/costreport/ "
            "(A/B: ?compare=ab-test-gpt,ab-test-claude)\n"
            "Budgets: /admin/fluxgate_django/budget/  Alerts: /admin/fluxgate_django/budgetalert/\n"
        )
