"""``manage.py fluxgate_rebuild_rollups [--since YYYY-MM-DD]``: recompute the report
rollups from the events (all days, or ``--since`` a site-local day on).

The recorder keeps the rollups current; rebuild them after deleting or editing events,
after deleting a team, after installing FluxGate's reports on a site with events already
recorded, or if rollup writes failed (the recorder logs it). The result equals what the
recorder would have written.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fluxgate_django.reports.rollups import rebuild_rollups


class Command(BaseCommand):
    help = "Rebuild FluxGate's daily report rollups from the events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since", help="first day to rebuild (YYYY-MM-DD, site time zone); default: all"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since = None
        if options["since"]:
            try:
                since = dt.date.fromisoformat(options["since"])
            except ValueError as exc:
                raise CommandError(f"--since {options['since']!r} is not a date") from exc
        started = time.perf_counter()
        rows = rebuild_rollups(since)
        scope = f"from {since}" if since else "for all days"
        self.stdout.write(
            f"Rebuilt {rows} rollup rows {scope} in {time.perf_counter() - started:.1f} s."
        )
