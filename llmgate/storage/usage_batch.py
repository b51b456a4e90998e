"""Usage batches as the drivers take them: pure computation on usage rows, no database connection.

`Store.insert_usage` (store.py) turns a batch of usage row dicts into tuples in `USAGE_COLUMNS` order
(`build_usage_tuples`: defaults, `ts` in UTC, text clipped to its column, `estimated` checked) and sums
them into the `usage_daily` roll-up (`build_daily_totals`), then hands both to the driver. The per-row
work stays in C (one itemgetter per row, column-wise max/sum/zip) because it runs in a worker thread on
the event loop's GIL. Also here: the column orders both tables are written in, and the checks that tell
the store when a batch holds a value its fast path cannot write as SQLAlchemy Core would (`fits_binary_copy`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import String
from sqlalchemy.dialects.postgresql import dialect as postgresql_dialect

from llmgate.storage.models import USAGE_COLUMNS, UsageDailyRow, UsageRow

# The totals of a `usage_daily` row, which every report row carries (integers), before `cost_usd`.
REPORT_TOTAL_FIELDS = (
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nusd",
)

# The primary key of a `usage_daily` row, day first.
DAILY_KEY_COLUMNS = ("day", "key_id", "team", "model", "prompt_name")
# The usage columns summed as they are (requests and errors are counted).
SUMMED_USAGE_FIELDS = REPORT_TOTAL_FIELDS[2:]
# `usage_daily` columns in table order: the key, then key_name and the totals.
DAILY_COLUMNS: tuple[str, ...] = tuple(column.name for column in UsageDailyRow.__table__.columns)

_USAGE_DEFAULTS: dict[str, Any] = {
    "input_tokens": 0,
    "cached_input_tokens": 0,
    "cache_write_tokens": 0,
    "output_tokens": 0,
    "reasoning_tokens": 0,
    "cost_nusd": 0,
    "latency_ms": 0.0,
    "estimated": False,
}
# Text longer than its column is cut, so one odd value can never make a whole batch fail on PostgreSQL.
_USAGE_TEXT_LENGTHS: dict[str, int] = {
    column.name: column.type.length
    for column in UsageRow.__table__.columns
    if isinstance(column.type, String) and column.type.length
}

# `ts` as microseconds since the epoch (SQLite), the positions in a usage tuple (USAGE_COLUMNS order)
# and the limits the checks below compare against.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DAY = EPOCH.date()
MICROSECOND = timedelta(microseconds=1)
_DAY_MICROS = 86_400_000_000
_INDEX = {name: index for index, name in enumerate(USAGE_COLUMNS)}
_AFTER_TS = itemgetter(*USAGE_COLUMNS[1:])
_KEY_ID, _TEAM, _MODEL, _PROMPT_NAME = (_INDEX[name] for name in DAILY_KEY_COLUMNS[1:])
_KEY_NAME, _STATUS, _ESTIMATED = _INDEX["key_name"], _INDEX["status"], _INDEX["estimated"]
_SUMMED_INDEXES = tuple(_INDEX[name] for name in SUMMED_USAGE_FIELDS)
_TEXT_LIMITS = tuple((itemgetter(_INDEX[name]), length) for name, length in _USAGE_TEXT_LENGTHS.items())
_COLUMN_LIMITS = tuple(_USAGE_TEXT_LENGTHS.get(name, 0) for name in USAGE_COLUMNS)
_BOOLEANS = frozenset({None, True, False})  # 0 and 1 too: SQLAlchemy's Boolean takes them
_AT_LEAST_400 = (400).__le__

# psycopg's binary dumper for each column type (set_types); an unknown type fails at import, not in a batch.
_PG_COPY_TYPE_NAMES = {
    "VARCHAR": "varchar",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "FLOAT": "float8",
    "BOOLEAN": "bool",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
}
PG_COPY_TYPES = [
    _PG_COPY_TYPE_NAMES[column.type.compile(dialect=postgresql_dialect()).split("(")[0]]
    for column in UsageRow.__table__.columns
    if column.name != "id"
]
_PG_INT4_COLUMNS = tuple(itemgetter(i) for i, name in enumerate(PG_COPY_TYPES) if name == "int4")


def build_usage_tuples(rows: list[dict[str, Any]], micros: bool) -> list[tuple[Any, ...]]:
    """The rows as tuples in USAGE_COLUMNS order: `ts` an aware UTC datetime (with `micros`, the
    microseconds since the epoch), text clipped to its column, `estimated` checked.

    A row as `build_usage_row` makes it (every column, `ts` an aware UTC datetime) takes one
    itemgetter call; any other (missing columns, `ts` as text or in another zone) goes through
    `_usage_values`, which also refuses unknown columns."""
    width = len(USAGE_COLUMNS)
    after_ts = _AFTER_TS
    try:
        if micros:
            batch = [
                ((ts - EPOCH) // MICROSECOND,) + after_ts(row)  # noqa: RUF005 (concatenation is faster)
                if len(row) == width and (ts := row["ts"]).__class__ is datetime and ts.tzinfo is UTC
                else _usage_tuple(row, micros)
                for row in rows
            ]
        else:
            batch = [
                (ts,) + after_ts(row)  # noqa: RUF005
                if len(row) == width and (ts := row["ts"]).__class__ is datetime and ts.tzinfo is UTC
                else _usage_tuple(row, micros)
                for row in rows
            ]
    except KeyError:  # as many keys as columns, but not the columns (an `id` instead of one)
        batch = [_usage_tuple(row, micros) for row in rows]
    if not _text_fits(batch):
        batch = [tuple(map(_clip_text, row, _COLUMN_LIMITS)) for row in batch]
    flags = set(map(itemgetter(_ESTIMATED), batch))
    if not flags <= _BOOLEANS:
        raise ValueError(f"usage `estimated` must be true or false, got {sorted(map(repr, flags - _BOOLEANS))[0]}")
    return batch


def _usage_tuple(row: dict[str, Any], micros: bool) -> tuple[Any, ...]:
    values = tuple(_usage_values(row).values())
    return ((values[0] - EPOCH) // MICROSECOND, *values[1:]) if micros else values


def _usage_values(row: dict[str, Any]) -> dict[str, Any]:
    """One row with every usage column (defaults for the missing ones), `ts` in UTC, text clipped."""
    unknown = set(row) - set(USAGE_COLUMNS) - {"id"}
    if unknown:
        raise ValueError(f"unknown usage column {sorted(unknown)[0]!r}")
    values = {column: row.get(column, _USAGE_DEFAULTS.get(column)) for column in USAGE_COLUMNS}
    values["ts"] = _utc(values["ts"])
    for column, length in _USAGE_TEXT_LENGTHS.items():
        text = values[column]
        if isinstance(text, str) and len(text) > length:
            values[column] = text[:length]
    return values


def _utc(ts: Any) -> datetime:
    """A usage timestamp (aware datetime or ISO 8601 text; naive means UTC) as an aware UTC datetime."""
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    if not isinstance(ts, datetime):
        raise ValueError(f"usage `ts` must be a datetime or ISO 8601 text, got {ts!r}")
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _text_fits(batch: list[tuple[Any, ...]]) -> bool:
    """No text longer than its column (a column at a time, in C); False also when a text column
    holds something else, which the exact per-value clipping then leaves as it is."""
    try:
        return all(
            max(map(len, filter(None, map(getter, batch))), default=0) <= length for getter, length in _TEXT_LIMITS
        )
    except TypeError:
        return False


def _clip_text(value: Any, length: int) -> Any:
    return value[:length] if length and isinstance(value, str) and len(value) > length else value


def fits_binary_copy(batch: list[tuple[Any, ...]]) -> bool:
    """Whether psycopg's binary COPY can write the batch as Core would. Its int4 dumper wraps a
    value past 32 bits around instead of failing, so those columns are range-checked first (any
    other mismatch makes a dumper raise, which `_DriverRefused` catches)."""
    try:
        return all(max(map(abs, filter(None, map(getter, batch))), default=0) < 2**31 for getter in _PG_INT4_COLUMNS)
    except TypeError:
        return False


def build_daily_totals(batch: list[tuple[Any, ...]], micros: bool) -> list[tuple[Any, ...]]:
    """A batch of usage tuples summed per `usage_daily` key, as tuples in DAILY_COLUMNS order (`day`
    a date, a missing key, team, model or prompt ""), in key order (so concurrent writers lock
    roll-up rows in the same order and never deadlock). `key_name` is the batch's last one set."""
    days = [row[0] // _DAY_MICROS for row in batch] if micros else [row[0].date() for row in batch]
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for day, row in zip(days, batch, strict=True):
        key = (day, row[_KEY_ID] or "", row[_TEAM] or "", row[_MODEL] or "", row[_PROMPT_NAME] or "")
        group = groups.get(key)
        if group is None:
            groups[key] = [row]
        else:
            group.append(row)
    totals: list[tuple[Any, ...]] = []
    for key in sorted(groups):
        group = groups[key]
        columns = list(zip(*group, strict=True))
        day = _EPOCH_DAY + timedelta(days=key[0]) if micros else key[0]
        totals.append(
            (
                day,
                *key[1:],
                next(filter(None, reversed(columns[_KEY_NAME])), None),
                len(group),
                _count_errors(columns[_STATUS]),
                *(_int_sum(columns[index]) for index in _SUMMED_INDEXES),
            )
        )
    return totals


def _count_errors(statuses: tuple[Any, ...]) -> int:
    try:
        return sum(map(_AT_LEAST_400, filter(None, statuses)))  # ints compare in C; anything else raises
    except TypeError:
        return sum(1 for status in statuses if (status or 0) >= 400)


def _int_sum(values: tuple[Any, ...]) -> int:
    """The sum of int(value or 0), as the roll-up has always added; in C when every value is an int."""
    try:
        total = sum(filter(None, values))
    except TypeError:
        total = None
    return total if total.__class__ is int else sum(int(value or 0) for value in values)
