"""Server-side SVG charts for the dashboard: cost per day as stacked bars.

The dashboard must work without internet, so charts are drawn here as plain SVG
markup (no JavaScript chart library, no CDN). Everything is pure: figures in,
markup out. Costs stay integer nano-USD until they are placed on the axis.
Every label is escaped here, so the markup is safe to embed in a page as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from html import escape
from typing import Any

NANO_PER_USD = 1_000_000_000
OTHER_LABEL = "other"
_CENT = Decimal("0.01")
_MICRO = Decimal("0.000001")

# Tableau 10: distinguishable and colour-blind friendlier than a rainbow; "other" is grey.
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
    "#5f6b7a",
)
OTHER_COLOUR = "#bab0ac"

_WIDTH = 960
_PLOT_HEIGHT = 260
_MARGIN_LEFT = 80
_MARGIN_RIGHT = 16
_MARGIN_TOP = 16
_AXIS_HEIGHT = 44
_LEGEND_ROW = 20
_LEGEND_COLUMNS = 4
_LEGEND_LABEL_CHARS = 30
_MAX_X_LABELS = 12
_Y_TICKS = 5


@dataclass(frozen=True, slots=True)
class Series:
    """One stacked layer: a label and its cost (nano-USD) per day, in day order."""

    label: str
    values: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.values)


def build_day_values(rows: Iterable[Mapping[str, Any]], days: list[str]) -> tuple[int, ...]:
    """Cost (nano-USD) per day in `days` order from report rows with `day` and `cost_nusd`."""
    index = {day: i for i, day in enumerate(days)}
    values = [0] * len(days)
    for row in rows:
        i = index.get(str(row["day"]))
        if i is not None:
            values[i] += int(row["cost_nusd"])
    return tuple(values)


def build_day_series(
    rows: Iterable[Mapping[str, Any]],
    days: list[str],
    label_of: Callable[[Mapping[str, Any]], str],
    top_n: int = 10,
) -> list[Series]:
    """Group report rows (each with `day` and `cost_nusd`) into one series per label.

    The `top_n` labels by total cost keep their own series (largest first); the
    rest are summed into one "other" series, so a chart never has more than
    `top_n + 1` layers. Rows for days outside `days` are ignored.
    """
    rows_by_label: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        rows_by_label.setdefault(label_of(row), []).append(row)
    per_label = {label: build_day_values(label_rows, days) for label, label_rows in rows_by_label.items()}
    ranked = sorted(per_label.items(), key=lambda item: (-sum(item[1]), item[0]))
    series = [Series(label, tuple(values)) for label, values in ranked[:top_n]]
    rest = ranked[top_n:]
    if rest:
        other = [sum(values[i] for _, values in rest) for i in range(len(days))]
        series.append(Series(OTHER_LABEL, tuple(other)))
    return [s for s in series if s.total > 0]


def build_nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above `value` (a readable axis top)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = factor * 10.0**exponent
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10.0 ** (exponent + 1)


def format_axis_usd(usd: float, step: float) -> str:
    """An axis label in USD with as many decimals as the tick step needs."""
    decimals = next((d for d in range(10) if abs(round(step, d) - step) <= step * 1e-9), 9)
    if step < 1:
        decimals = max(decimals, 2)  # cents, as money is usually written
    return f"${usd:,.{decimals}f}"


def format_usd_nano(nusd: int) -> str:
    """A cost for people: USD with cents, or more places for sub-cent amounts."""
    usd = Decimal(nusd) / NANO_PER_USD
    places = _CENT if nusd == 0 or abs(usd) >= _CENT else _MICRO
    return f"${usd.quantize(places, rounding=ROUND_HALF_UP):,}"


def _colour(series: Series, position: int) -> str:
    if series.label == OTHER_LABEL:
        return OTHER_COLOUR
    return PALETTE[position % len(PALETTE)]


def _shorten(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def _x_label(day: str) -> str:
    return day[5:] if len(day) == 10 else day  # "MM-DD": the year is in the range picker


def _bars(days: list[str], series: list[Series], scale: float, band: float, colours: list[str]) -> list[str]:
    parts: list[str] = []
    bar_width = max(1.0, band * 0.8)
    baseline = _MARGIN_TOP + _PLOT_HEIGHT
    for i, day in enumerate(days):
        x = _MARGIN_LEFT + i * band + (band - bar_width) / 2
        stacked = 0.0
        for s, colour in zip(series, colours, strict=True):
            value = s.values[i]
            if value <= 0:
                continue
            height = value * scale
            y = baseline - stacked - height
            stacked += height
            tip = f"{s.label} \u2014 {day} UTC \u2014 {format_usd_nano(value)}"
            parts.append(
                f'<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{bar_width:.2f}" '
                f'height="{max(height, 0.5):.2f}" fill="{colour}"><title>{escape(tip)}</title></rect>'
            )
    return parts


def _axes(days: list[str], top_usd: float, band: float) -> list[str]:
    parts: list[str] = []
    step = top_usd / _Y_TICKS
    right = _WIDTH - _MARGIN_RIGHT
    for tick in range(_Y_TICKS + 1):
        y = _MARGIN_TOP + _PLOT_HEIGHT - tick * _PLOT_HEIGHT / _Y_TICKS
        parts.append(f'<line class="grid" x1="{_MARGIN_LEFT}" y1="{y:.2f}" x2="{right}" y2="{y:.2f}"/>')
        parts.append(
            f'<text class="tick" x="{_MARGIN_LEFT - 6}" y="{y + 4:.2f}" text-anchor="end">'
            f"{escape(format_axis_usd(tick * step, step))}</text>"
        )
    every = max(1, math.ceil(len(days) / _MAX_X_LABELS))
    label_y = _MARGIN_TOP + _PLOT_HEIGHT + 16
    for i in range(0, len(days), every):
        x = _MARGIN_LEFT + (i + 0.5) * band
        parts.append(
            f'<text class="tick" x="{x:.2f}" y="{label_y}" text-anchor="middle">{escape(_x_label(days[i]))}</text>'
        )
    parts.append(
        f'<text class="axis-title" x="{(_MARGIN_LEFT + right) / 2:.0f}" y="{label_y + 20}" '
        'text-anchor="middle">Day (UTC)</text>'
    )
    return parts


def _legend(series: list[Series], colours: list[str], top: float) -> list[str]:
    parts: list[str] = []
    column_width = (_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT) / _LEGEND_COLUMNS
    for i, (s, colour) in enumerate(zip(series, colours, strict=True)):
        x = _MARGIN_LEFT + (i % _LEGEND_COLUMNS) * column_width
        y = top + (i // _LEGEND_COLUMNS) * _LEGEND_ROW
        text = f"{_shorten(s.label, _LEGEND_LABEL_CHARS)} ({format_usd_nano(s.total)})"
        parts.append(
            f'<g class="legend-item"><rect x="{x:.2f}" y="{y:.2f}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 18:.2f}" y="{y + 10:.2f}">{escape(text)}</text></g>'
        )
    return parts


def render_stacked_bars(days: list[str], series: list[Series], title: str) -> str:
    """SVG markup of cost per day (x: `days`, y: USD) with one stacked layer per series.

    With no cost at all in range it still returns an SVG, holding a "no usage" note.
    """
    legend_rows = math.ceil(len(series) / _LEGEND_COLUMNS)
    legend_top = _MARGIN_TOP + _PLOT_HEIGHT + _AXIS_HEIGHT
    height = legend_top + legend_rows * _LEGEND_ROW + 8
    band = (_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT) / max(1, len(days))
    colours = [_colour(s, i) for i, s in enumerate(series)]
    daily_totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    peak_usd = max(daily_totals, default=0) / NANO_PER_USD
    top_usd = build_nice_ceiling(peak_usd)
    scale = _PLOT_HEIGHT / (top_usd * NANO_PER_USD)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_WIDTH} {height}" '
        f'width="100%" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        *_axes(days, top_usd, band),
        *_bars(days, series, scale, band, colours),
        *_legend(series, colours, legend_top),
    ]
    if peak_usd == 0:
        parts.append(
            f'<text class="empty" x="{(_MARGIN_LEFT + _WIDTH - _MARGIN_RIGHT) / 2:.0f}" '
            f'y="{_MARGIN_TOP + _PLOT_HEIGHT / 2:.0f}" text-anchor="middle">No usage in this range</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
