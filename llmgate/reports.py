"""Cost reports: reading the request's parameters, and rendering rows as JSON, CSV or a text table.

The rows themselves come from `Store.cost_report` (aggregated in SQL, integer
nano-USD). Everything here is pure: parameters in, `InvalidRequest` naming the
bad parameter out; rows in, text out.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from llmgate.cost import format_usd
from llmgate.errors import InvalidRequest
from llmgate.storage.store import GROUP_BY_CHOICES, REPORT_GROUP_COLUMNS
from llmgate.storage.usage_batch import REPORT_TOTAL_FIELDS

ReportFormat = Literal["json", "csv"]
# Spreadsheets run a cell starting with these as a formula; a key name must never do that.
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_SINCE = re.compile(r"^(\d{1,4})([dw])$")


@dataclass(frozen=True, slots=True)
class ReportParams:
    group_by: tuple[str, ...]
    start: date | None
    end: date | None
    format: ReportFormat = "json"


def parse_report_params(
    group_by: str | None,
    start: str | None,
    end: str | None,
    format: str | None = None,
    default_group_by: str = "key",
) -> ReportParams:
    """Validate a report's query parameters; raises InvalidRequest naming the bad one."""
    groups = parse_group_by(group_by if group_by is not None else default_group_by)
    first = parse_day(start, "start")
    last = parse_day(end, "end")
    if first is not None and last is not None and first > last:
        raise InvalidRequest(f"`start` ({first}) is after `end` ({last}).", param="start")
    fmt = (format or "json").lower()
    if fmt not in ("json", "csv"):
        raise InvalidRequest(f"`format` must be json or csv, not {format!r}.", param="format")
    return ReportParams(group_by=groups, start=first, end=last, format=fmt)  # type: ignore[arg-type]


def parse_group_by(text: str) -> tuple[str, ...]:
    """`key,day` -> ("key", "day"); an empty text means one row of totals."""
    groups = [part.strip().lower() for part in text.split(",") if part.strip()]
    for group in groups:
        if group not in GROUP_BY_CHOICES:
            raise InvalidRequest(
                f"`group_by` takes a comma-separated list of {', '.join(GROUP_BY_CHOICES)}; got {group!r}.",
                param="group_by",
            )
    return tuple(dict.fromkeys(groups))


def parse_day(text: str | None, param: str) -> date | None:
    """A YYYY-MM-DD query parameter (a UTC day)."""
    if text is None or text == "":
        return None
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"`{param}` must be a date as YYYY-MM-DD, got {text!r}.", param=param) from None


def parse_since(text: str, today: date | None = None) -> date:
    """The CLI's `--since`: `7d` (the last 7 days, today included), `2w`, or a YYYY-MM-DD date."""
    today = today or datetime.now(UTC).date()
    match = _SINCE.match(text.strip().lower())
    if match:
        count, unit = int(match.group(1)), match.group(2)
        if count < 1:
            raise InvalidRequest("`since` must cover at least one day.", param="since")
        days = count * (7 if unit == "w" else 1)
        return today - timedelta(days=days - 1)
    day = parse_day(text, "since")
    assert day is not None
    return day


def report_columns(group_by: tuple[str, ...] | list[str]) -> list[str]:
    """A report's columns in order: the group columns, the totals, then `cost_usd`."""
    groups = [column for group in group_by for column in REPORT_GROUP_COLUMNS[group]]
    return [*groups, *REPORT_TOTAL_FIELDS, "cost_usd"]


def build_report(params: ReportParams, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON reply: the rows, and their total (an exact sum of integers)."""
    total: dict[str, Any] = {name: sum(row[name] for row in rows) for name in REPORT_TOTAL_FIELDS}
    total["cost_usd"] = format_usd(total["cost_nusd"])
    return {
        "object": "report",
        "group_by": list(params.group_by),
        "start": params.start.isoformat() if params.start else None,
        "end": params.end.isoformat() if params.end else None,
        "data": rows,
        "total": total,
    }


def render_csv(group_by: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with a header row."""
    columns = report_columns(group_by)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return out.getvalue()


def render_table(group_by: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table for a terminal (numbers right-aligned)."""
    columns = [c for c in report_columns(group_by) if c != "cost_nusd"]
    cells = [[_text(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    numeric = [column in REPORT_TOTAL_FIELDS or column == "cost_usd" for column in columns]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _csv_cell(value: Any) -> str:
    text = _text(value)
    if isinstance(value, str) and text.startswith(_FORMULA_LEADS):
        return "'" + text
    return text
