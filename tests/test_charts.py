"""The dashboard's SVG charts: series shaping (top N + other) and the markup itself."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from llmgate.charts import (
    OTHER_COLOUR,
    OTHER_LABEL,
    Series,
    build_day_series,
    build_nice_ceiling,
    format_axis_usd,
    format_usd_nano,
    render_stacked_bars,
)

SVG = "{http://www.w3.org/2000/svg}"
DAYS = ["2026-03-01", "2026-03-02", "2026-03-03"]


def _rows(*items: tuple[str, str, int]) -> list[dict]:
    return [{"day": day, "model": label, "cost_nusd": cost} for day, label, cost in items]


def test_series_keep_top_n_and_sum_the_rest_into_other() -> None:
    rows = _rows(
        ("2026-03-01", "a", 500),
        ("2026-03-02", "a", 100),
        ("2026-03-01", "b", 300),
        ("2026-03-03", "c", 20),
        ("2026-03-03", "d", 30),
        ("2026-03-02", "d", 1),
    )
    series = build_day_series(rows, DAYS, lambda r: r["model"], top_n=2)
    assert [s.label for s in series] == ["a", "b", OTHER_LABEL]
    assert series[0].values == (500, 100, 0)
    assert series[1].values == (300, 0, 0)
    assert series[2].values == (0, 1, 50)
    assert sum(s.total for s in series) == sum(r["cost_nusd"] for r in rows)


def test_series_ignore_days_outside_the_range_and_zero_series() -> None:
    rows = _rows(("2026-02-28", "a", 999), ("2026-03-01", "b", 0), ("2026-03-02", "c", 7))
    series = build_day_series(rows, DAYS, lambda r: r["model"], top_n=10)
    assert series == [Series("c", (0, 7, 0))]


def test_nice_ceiling_is_a_readable_bound_at_or_above_the_peak() -> None:
    assert build_nice_ceiling(0) == 1.0
    assert build_nice_ceiling(0.7) == 1.0
    assert build_nice_ceiling(1.2) == 2.0
    assert build_nice_ceiling(2.1) == 2.5
    assert build_nice_ceiling(3) == 5.0
    assert build_nice_ceiling(730) == 1000.0
    assert build_nice_ceiling(0.0042) == 0.005


def test_axis_labels_carry_the_decimals_the_step_needs() -> None:
    assert format_axis_usd(10, 2) == "$10"
    assert format_axis_usd(0.5, 0.25) == "$0.50"
    assert format_axis_usd(0.0015, 0.0005) == "$0.0015"
    assert format_axis_usd(1.5, 0.5) == "$1.50"
    assert format_axis_usd(2000, 500) == "$2,000"


def test_usd_for_people_shows_cents_or_sub_cent_places() -> None:
    assert format_usd_nano(0) == "$0.00"
    assert format_usd_nano(12_345_000_000) == "$12.35"
    assert format_usd_nano(1_500) == "$0.000002"
    assert format_usd_nano(2_500_000) == "$0.002500"


def test_stacked_bars_draw_one_rect_per_nonzero_value_stacked_to_scale() -> None:
    series = [Series("a", (2_000_000_000, 0, 1_000_000_000)), Series(OTHER_LABEL, (1_000_000_000, 0, 0))]
    svg = render_stacked_bars(DAYS, series, "Cost per day")
    root = ET.fromstring(svg)
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]
    assert len(bars) == 3
    # Day 1 stacks a (2 USD) under other (1 USD): other sits directly on top of a, half its height.
    a_day1, other_day1 = bars[0], bars[1]
    assert float(a_day1.get("y")) == float(other_day1.get("y")) + float(other_day1.get("height"))
    assert float(a_day1.get("height")) == 2 * float(other_day1.get("height"))
    assert other_day1.get("fill") == OTHER_COLOUR
    assert "$3" in {t.text for t in root.iter(f"{SVG}text")}  # the 3 USD peak gives a 0..5 axis in steps of 1
    assert "Day (UTC)" in svg


def test_labels_are_escaped_in_the_markup() -> None:
    series = [Series('<script>alert("x")</script>', (5, 0, 0))]
    svg = render_stacked_bars(DAYS, series, "t <b>")
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    ET.fromstring(svg)  # still well-formed XML


def test_an_empty_range_still_renders_a_chart_with_a_note() -> None:
    svg = render_stacked_bars(DAYS, [], "Cost per day")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert not [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]
    assert "No usage in this range" in svg


def test_long_ranges_thin_out_the_day_labels() -> None:
    days = [f"2026-01-{d:02d}" for d in range(1, 32)] + [f"2026-02-{d:02d}" for d in range(1, 29)]
    svg = render_stacked_bars(days, [Series("a", tuple([1_000] * len(days)))], "t")
    day_labels = re.findall(r">(\d\d-\d\d)</text>", svg)
    assert 5 <= len(day_labels) <= 12
    assert day_labels[0] == "01-01"
