"""Reports as CSV, JSON and a plain-text table, and the display formats of their values
(shared by the admin page and ``manage.py fluxgate_report``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .results import EXPORT_COLUMNS, Breakdown, BreakdownRow

# -- display formats -----------------------------------------------------------------------


#: Money is stored to 1e-10 USD: no amount needs more decimals than this.
MAX_DECIMALS = 10


def usd(amount: Decimal | None) -> str:
    """``$1,234.57``, ``$0.0123``, ``$0.000045``, ``$0.000000535``: more decimals for
    smaller amounts (three significant digits below a millionth), always in fixed notation —
    never ``$5.35E-7``."""
    if amount is None:
        return "-"
    if not isinstance(amount, Decimal):
        amount = Decimal(str(amount))
    size = abs(amount)
    if not size:
        return "$0"
    if size >= 1:
        return f"${amount:,.2f}"
    if size >= Decimal("0.01"):
        return f"${amount:.4f}"
    # Six decimals down to a millionth (0.001200, 0.000045), then three significant
    # digits (5.35E-7 → 0.000000535), at most ten.
    decimals = 6 if size >= Decimal("0.000001") else min(2 - size.adjusted(), MAX_DECIMALS)
    text = f"{amount:.{decimals}f}"
    return "$0" if not Decimal(text) else f"${text}"


def cost_text(row: BreakdownRow) -> str:
    """A row's cost, never pretending an unpriced call cost $0: ``unpriced``,
    ``$1.20 + 3 unpriced`` or ``$1.20``."""
    cost = row.cost_usd
    if cost is None:
        return f"unpriced ({row.unpriced})" if row.unpriced != 1 else "unpriced"
    return f"{usd(cost)} + {row.unpriced} unpriced" if row.unpriced else usd(cost)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def count(value: int) -> str:
    return f"{value:,}"


# -- exports -------------------------------------------------------------------------------


def to_csv(report: Breakdown | Sequence[BreakdownRow]) -> str:
    """CSV with a header of ``EXPORT_COLUMNS`` and one line per row, then (for a report)
    the total line (key empty, label ``Total``). Unknown values are empty cells: an
    unpriced cost is empty, never 0."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    rows = list(report)
    if isinstance(report, Breakdown):
        rows.append(report.total)
    for row in rows:
        values = row.as_dict()
        writer.writerow(["" if values[c] is None else values[c] for c in EXPORT_COLUMNS])
    return out.getvalue()


def to_json(report: Breakdown) -> str:
    return json.dumps(report.as_dict(), indent=2)


TABLE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("requests", lambda r: count(r.requests)),
    ("cost", cost_text),
    ("cost/req", lambda r: usd(r.cost_per_request_usd)),
    ("share", lambda r: percent(r.share_of_cost)),
    ("p50", lambda r: ms(r.p50_latency_ms)),
    ("p95", lambda r: ms(r.p95_latency_ms)),
    ("errors", lambda r: percent(r.error_rate)),
    ("fallback", lambda r: percent(r.fallback_rate)),
    ("cache hit", lambda r: percent(r.cache_hit_rate)),
    ("saved", lambda r: usd(r.cost_saved_usd)),
    ("tokens in", lambda r: count(r.input_tokens)),
    ("tokens out", lambda r: count(r.output_tokens)),
    ("cache read", lambda r: count(r.cache_read_tokens)),
    ("cache write", lambda r: count(r.cache_write_tokens)),
)


def to_table(report: Breakdown) -> str:
    """A plain-text table of the report with a total line."""
    header = (report.by, *(name for name, _ in TABLE_COLUMNS))
    lines = [(row.label, *(fmt(row) for _, fmt in TABLE_COLUMNS)) for row in report.rows]
    footer = ("total", *(fmt(report.total) for _, fmt in TABLE_COLUMNS))
    widths = [max(len(line[c]) for line in [header, *lines, footer]) for c in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = f"Cost by {report.by}, {report.start} to {report.end}"
    blocked = report.total.budget_blocked
    notes = [f"{blocked} calls refused by budgets (not counted above)"] if blocked else []
    return "\n".join([title, fmt(header), rule, *map(fmt, lines), rule, fmt(footer), *notes])
