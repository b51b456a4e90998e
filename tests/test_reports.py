"""Report parameters (400 naming the parameter) and rendering (CSV that parses back to the rows)."""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest

from llmgate.cost import format_usd
from llmgate.errors import InvalidRequest
from llmgate.reports import (
    ReportParams,
    build_report,
    parse_group_by,
    parse_report_params,
    parse_since,
    render_csv,
    render_table,
    report_columns,
)


def row(key_id: str, name: str, cost: int, requests: int = 1) -> dict:
    return {
        "key_id": key_id,
        "key_name": name,
        "requests": requests,
        "errors": 0,
        "input_tokens": 10,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 5,
        "reasoning_tokens": 0,
        "cost_nusd": cost,
        "cost_usd": format_usd(cost),
    }


def test_parse_report_params_defaults_and_combinations() -> None:
    assert parse_report_params(None, None, None) == ReportParams(("key",), None, None, "json")
    params = parse_report_params(" Key, day,key ", "2026-01-01", "2026-01-31", "CSV")
    assert params == ReportParams(("key", "day"), date(2026, 1, 1), date(2026, 1, 31), "csv")
    assert parse_report_params("", None, None).group_by == ()
    assert parse_report_params(None, None, None, default_group_by="day").group_by == ("day",)
    assert parse_report_params(None, "2026-01-01", "2026-01-01").start == date(2026, 1, 1)


@pytest.mark.parametrize(
    "args, param",
    [
        (("team,region", None, None), "group_by"),
        (("key", "2026-02-30", None), "start"),
        (("key", "20260101", None), "start"),
        (("key", "2026-01-01T00:00:00", None), "start"),
        (("key", None, "tomorrow"), "end"),
        (("key", "2026-02-01", "2026-01-31"), "start"),
        (("key", None, None, "xlsx"), "format"),
    ],
)
def test_bad_parameters_are_invalid_requests_naming_the_parameter(args: tuple, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_report_params(*args)
    assert caught.value.status == 400 and caught.value.param == param and param in caught.value.message


def test_parse_since() -> None:
    today = date(2026, 3, 10)
    assert parse_since("1d", today) == today
    assert parse_since("7d", today) == date(2026, 3, 4)
    assert parse_since("2w", today) == date(2026, 2, 25)
    assert parse_since("2026-01-05", today) == date(2026, 1, 5)
    for bad in ("0d", "7m", "soon"):
        with pytest.raises(InvalidRequest) as caught:
            parse_since(bad, today)
        assert caught.value.param == "since"


def test_columns_follow_the_group_order() -> None:
    assert report_columns(("model", "key"))[:3] == ["model", "key_id", "key_name"]
    assert report_columns(())[-2:] == ["cost_nusd", "cost_usd"]
    assert parse_group_by("prompt") == ("prompt",)


def test_build_report_totals_are_exact_integer_sums() -> None:
    rows = [row("k1", "a", 1_000_000_001, 2), row("k2", "b", 1, 3), row("k3", "c", 999_999_999)]
    report = build_report(ReportParams(("key",), date(2026, 1, 1), None), rows)
    assert report["total"]["cost_nusd"] == 2_000_000_001 and report["total"]["cost_usd"] == "2.000000001"
    assert report["total"]["requests"] == 6
    assert (report["start"], report["end"], report["data"]) == ("2026-01-01", None, rows)


def test_csv_has_a_header_and_parses_back_to_the_rows() -> None:
    rows = [row("k1", 'quote " and, comma', 5), row("k2", "line\nbreak", 7)]
    parsed = list(csv.DictReader(io.StringIO(render_csv(("key",), rows))))
    assert parsed == [{k: str(v) for k, v in r.items()} for r in rows]


def test_csv_defuses_spreadsheet_formulas_in_names() -> None:
    text = render_csv(("key",), [row("k1", '=HYPERLINK("http://evil")', 1), row("k2", "@SUM(A1)", 1)])
    names = [r["key_name"] for r in csv.DictReader(io.StringIO(text))]
    assert names == ['\'=HYPERLINK("http://evil")', "'@SUM(A1)"]


def test_table_aligns_numbers_right() -> None:
    lines = render_table(("key",), [row("k1", "alpha", 1_500_000_000, 12), row("k22", None, 5)]).splitlines()
    assert lines[0].split()[:3] == ["key_id", "key_name", "requests"]
    assert lines[2].endswith("1.500000000") and lines[3].endswith("0.000000005")
    assert len(lines[2]) == len(lines[3])
    assert "cost_nusd" not in lines[0]
