"""``manage.py fluxgate_report``: the admin cost report in a terminal, as a table, CSV or
JSON (the same numbers: both call :mod:`fluxgate_django.reports.queries`).

    manage.py fluxgate_report --by feature --days 30
    manage.py fluxgate_report --by model --team search --format csv > models.csv
    manage.py fluxgate_report --start 2025-01-01 --end 2025-01-31 --format json
    manage.py fluxgate_report --compare ab-test-gpt,ab-test-claude --days 7
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fluxgate_django.models import Team
from fluxgate_django.reports import export, queries


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD)") from exc


def _values(raw: list[str] | None) -> list[str]:
    return [v.strip() for item in raw or [] for v in item.split(",") if v.strip()]


class Command(BaseCommand):
    help = "Print the cost report (cost, requests, tokens, latency, error rates) of a date range."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--by", choices=list(queries.DIMENSIONS), default="feature", help="default: feature"
        )
        parser.add_argument(
            "--days",
            type=int,
            default=30,
            help="the last N days, today included, in the site's time zone (default 30)",
        )
        parser.add_argument("--start", help="first day (YYYY-MM-DD); overrides --days")
        parser.add_argument("--end", help="last day, included (YYYY-MM-DD; default today)")
        for name in ("team", "feature", "provider", "model"):
            parser.add_argument(
                f"--{name}",
                action="append",
                help=f"only this {name}{' (slug)' if name == 'team' else ''}; repeat or "
                "separate with commas for several",
            )
        parser.add_argument(
            "--compare",
            help="features to compare side by side (comma separated) instead of a breakdown",
        )
        parser.add_argument(
            "--format", choices=("table", "csv", "json"), default="table", help="default: table"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        start, end = self._range(options)
        filters = {
            name: _values(options[name])
            for name in ("team", "feature", "provider", "model")
            if options[name]
        }
        unknown = set(filters.get("team", [])) - set(
            Team.objects.filter(slug__in=filters.get("team", [])).values_list("slug", flat=True)
        )
        if unknown:
            raise CommandError(f"No team with slug {', '.join(sorted(unknown))}")
        fmt = options["format"]
        if options["compare"]:
            try:
                report = queries.compare(
                    _values([options["compare"]]), start, end, filters=filters
                )
            except ValueError as exc:  # (fewer than two features)
                raise CommandError(str(exc)) from exc
        else:
            report = queries.breakdown(options["by"], start, end, filters=filters)
        if fmt == "csv":
            self.stdout.write(export.to_csv(report), ending="")
        elif fmt == "json":
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(export.to_table(report))

    def _range(self, options: dict[str, Any]) -> tuple[dt.date, dt.date]:
        if options["start"] or options["end"]:
            end = _date(options["end"]) if options["end"] else queries.site_today()
            start = _date(options["start"]) if options["start"] else end
            if start > end:
                raise CommandError(f"--start {start} is after --end {end}")
            return start, end
        if options["days"] < 1:
            raise CommandError("--days must be at least 1")
        return queries.last_days(options["days"])
