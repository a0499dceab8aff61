"""A daily stacked bar chart of cost as inline SVG, rendered on the server.

No JavaScript and no chart library: the admin page works offline and the chart shows in
a screenshot, an e-mail or a saved page alike. Each series is a ``<g class="fg-series">``
of ``<rect class="fg-bar">`` (one per day with a cost), each with a ``<title>`` tooltip.
"""

from __future__ import annotations

import math
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .export import usd
from .results import Timeseries

#: Tableau 10: distinguishable, and readable by most colour-blind people.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
OTHER_COLOUR = "#bab0ac"


def nice_ceiling(value: float) -> tuple[float, float]:
    """``(top, step)``: a round axis maximum >= ``value`` and a tick step (4-5 ticks)."""
    if value <= 0:
        return 1.0, 0.25
    raw_step = value / 4
    magnitude = 10 ** math.floor(math.log10(raw_step))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step * 4 >= value:
            break
    return step * math.ceil(value / step - 1e-9), step


def axis_label(value: float, step: float) -> str:
    """``$0.20``, ``$1.25``, ``$1,500``: as many decimals as the tick step needs (>= 2
    below $1,000)."""
    decimals = 0
    while decimals < 10 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    if value < 1000:
        decimals = max(decimals, 2)
    return f"${value:,.{decimals}f}"


def series_colour(index: int, key: str) -> str:
    return OTHER_COLOUR if key == "__other__" else PALETTE[index % len(PALETTE)]


def stacked_bar_chart(ts: Timeseries, *, width: int = 1200, height: int = 320) -> SafeString:
    """The SVG markup of ``ts`` as stacked daily bars with axes and a legend."""
    left, right, top, bottom = 76, 12, 14, 30
    legend_rows = _legend_layout(ts, width - left - right)
    legend_height = 22 * (max(r for _, _, r, _ in legend_rows) + 1) if legend_rows else 0
    plot_w, plot_h = width - left - right, height - top - bottom
    total_height = height + legend_height + 6
    totals = ts.day_totals
    peak = float(max(totals, default=Decimal(0)))
    axis_top, step = nice_ceiling(peak)
    days = len(ts.days)
    slot = plot_w / max(days, 1)
    bar = max(1.0, slot * 0.72)

    def y(value: float) -> float:
        return top + plot_h - plot_h * value / axis_top

    parts = [
        f'<svg class="fg-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="100%" viewBox="0 0 {width} {total_height}" '
        f'style="max-width: {width}px; height: auto; display: block" '
        f'data-days="{days}" data-series="{len(ts.series)}" '
        f'aria-label="Daily cost by {escape(ts.by)}" '
        f'font-family="-apple-system, Segoe UI, Roboto, sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{total_height}" fill="#ffffff"/>',
    ]
    # Grid lines and y axis labels.
    ticks = round(axis_top / step)
    for i in range(ticks + 1):
        value = step * i
        ty = y(value)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="{"#999" if i == 0 else "#e4e4e4"}" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" fill="#555">'
            f"{axis_label(value, step)}</text>"
        )
    # Bars, series by series (the first series at the bottom).
    base = [0.0] * days
    for index, series in enumerate(ts.series):
        colour = series_colour(index, series.key)
        parts.append(f'<g class="fg-series" data-key="{escape(series.key)}" fill="{colour}">')
        for d, cost in enumerate(series.costs):
            if not cost:
                continue
            value = float(cost)
            y0, y1 = y(base[d]), y(base[d] + value)
            base[d] += value
            x = left + slot * d + (slot - bar) / 2
            parts.append(
                f'<rect class="fg-bar" x="{x:.1f}" y="{y1:.1f}" width="{bar:.1f}" '
                f'height="{max(y0 - y1, 0.5):.1f}"><title>{escape(series.label)} · '
                f"{ts.days[d].isoformat()}: {escape(usd(cost))}</title></rect>"
            )
        parts.append("</g>")
    # X axis labels: as many as fit.
    every = max(1, math.ceil(days / max(1, plot_w // 64)))
    for d in range(0, days, every):
        x = left + slot * d + slot / 2
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#555">'
            f"{ts.days[d]:%b %d}</text>"
        )
    if peak == 0:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'fill="#777" font-size="13">No priced cost in this range</text>'
        )
    # Legend.
    for index, label, row, x in legend_rows:
        colour = series_colour(index, ts.series[index].key)
        ly = height + 4 + row * 22
        parts.append(
            f'<rect class="fg-legend" x="{left + x}" y="{ly}" width="12" height="12" '
            f'fill="{colour}"/><text x="{left + x + 17}" y="{ly + 10}" fill="#333">'
            f"{escape(label)}</text>"
        )
    parts.append("</svg>")
    # Every interpolated text above is escaped.
    return mark_safe("".join(parts))


def _legend_layout(ts: Timeseries, width: int) -> list[tuple[int, str, int, int]]:
    """``(series index, label, row, x)`` of each legend entry, wrapping at ``width``."""
    out: list[tuple[int, str, int, int]] = []
    row = x = 0
    for index, series in enumerate(ts.series):
        label = series.label if len(series.label) <= 40 else series.label[:39] + "…"
        item = 17 + 7 * len(label) + 18
        if x and x + item > width:
            row, x = row + 1, 0
        out.append((index, label, row, x))
        x += item
    return out
