"""Store.insert_usage writes through the drivers (SQLite's executemany, PostgreSQL's binary COPY) and
leaves exactly the rows SQLAlchemy Core wrote before, in `usage` and in `usage_daily`.

`_reference_insert_usage` below is the Core implementation the fast path replaced, kept verbatim
(with the helpers it used) so the comparison does not move when store.py does. Each test runs on
SQLite and on PostgreSQL (LLMGATE_TEST_PG_URL; skipped with the reason when it is unset).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import String, create_engine, event, func, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from llmgate.storage import Store, create_store, usage_batch
from llmgate.storage import store as store_module
from llmgate.storage.models import USAGE_COLUMNS, UsageDailyRow, UsageRow
from llmgate.storage.usage_batch import (
    DAILY_COLUMNS,
    DAILY_KEY_COLUMNS,
    REPORT_TOTAL_FIELDS,
    SUMMED_USAGE_FIELDS,
    build_daily_totals,
    build_usage_tuples,
)
from llmgate.usage import dump_rows, parse_row_line
from tests.storage.schemas import fresh_schema

# -- the Core path insert_usage replaced (reference) ---------------------------------------------

_REF_DEFAULTS: dict[str, Any] = {
    "input_tokens": 0,
    "cached_input_tokens": 0,
    "cache_write_tokens": 0,
    "output_tokens": 0,
    "reasoning_tokens": 0,
    "cost_nusd": 0,
    "latency_ms": 0.0,
    "estimated": False,
}
_REF_TEXT_LENGTHS: dict[str, int] = {
    column.name: column.type.length
    for column in UsageRow.__table__.columns
    if isinstance(column.type, String) and column.type.length
}


def _reference_insert_usage(store: Store, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    batch = [_reference_usage_values(row) for row in rows]
    with store.engine.begin() as conn:
        conn.execute(UsageRow.__table__.insert(), batch)
        conn.execute(_reference_add_to_daily(store.dialect), _reference_daily_totals(batch))


def _reference_add_to_daily(dialect: str) -> Any:
    table = UsageDailyRow.__table__
    stmt = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(table)
    added = {name: table.c[name] + stmt.excluded[name] for name in REPORT_TOTAL_FIELDS}
    return stmt.on_conflict_do_update(
        index_elements=list(DAILY_KEY_COLUMNS),
        set_={**added, "key_name": func.coalesce(stmt.excluded.key_name, table.c.key_name)},
    )


def _reference_daily_totals(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in batch:
        key = (row["ts"].date(), *(row[column] or "" for column in DAILY_KEY_COLUMNS[1:]))
        entry = totals.get(key)
        if entry is None:
            entry = totals[key] = dict(zip(DAILY_KEY_COLUMNS, key, strict=True))
            entry.update(dict.fromkeys(REPORT_TOTAL_FIELDS, 0), key_name=None)
        entry["key_name"] = row["key_name"] or entry["key_name"]
        entry["requests"] += 1
        entry["errors"] += 1 if (row["status"] or 0) >= 400 else 0
        for name in SUMMED_USAGE_FIELDS:
            entry[name] += int(row[name] or 0)
    return [totals[key] for key in sorted(totals)]


def _reference_usage_values(row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(USAGE_COLUMNS) - {"id"}
    if unknown:
        raise ValueError(f"unknown usage column {sorted(unknown)[0]!r}")
    values = {column: row.get(column, _REF_DEFAULTS.get(column)) for column in USAGE_COLUMNS}
    values["ts"] = _reference_utc(values["ts"])
    for column, length in _REF_TEXT_LENGTHS.items():
        value = values[column]
        if isinstance(value, str) and len(value) > length:
            values[column] = value[:length]
    return values


def _reference_utc(ts: Any) -> datetime:
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    if not isinstance(ts, datetime):
        raise ValueError(f"usage `ts` must be a datetime or ISO 8601 text, got {ts!r}")
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# -- fixtures and rows ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def twins(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two empty stores on the same backend: one written by insert_usage, one by the reference."""
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path}/fast.db", f"sqlite:///{tmp_path}/reference.db"]
        yield from _opened(urls)
        return
    pg_url = request.getfixturevalue("pg_url")
    with fresh_schema(pg_url) as fast, fresh_schema(pg_url) as reference:
        yield from _opened([fast, reference])


def _opened(urls: list[str]) -> Iterator[tuple[Store, Store]]:
    fast, reference = stores = [create_store(url) for url in urls]
    try:
        for store in stores:
            store.upgrade()
        yield fast, reference
    finally:
        for store in stores:
            store.close()


def call_row(rng: random.Random, ts: datetime) -> dict[str, Any]:
    """A row as build_usage_row makes it: every column, `ts` an aware UTC datetime."""
    key = rng.randrange(12)
    failed = rng.random() < 0.1
    return {
        "ts": ts,
        "request_id": f"req-{rng.getrandbits(64):016x}",
        "key_id": f"key_{key:04d}" if key else None,
        "key_name": rng.choice([f"name-{key}", f"renamed-{key}", None]),
        "team": rng.choice(["red", "blue", None]),
        "surface": rng.choice(["chat", "messages", "embeddings"]),
        "model": rng.choice(["gpt-4o-mini", "claude-sonnet", "modèle-ü-😀", None]),
        "deployment": "openai/gpt-4o-mini",
        "provider": "openai",
        "status": rng.choice([429, 500, 502, 400]) if failed else 200,
        "input_tokens": rng.randrange(10_000),
        "cached_input_tokens": rng.randrange(100),
        "cache_write_tokens": rng.randrange(3),
        "output_tokens": rng.randrange(2_000),
        "reasoning_tokens": rng.randrange(50),
        "cost_nusd": rng.randrange(10**9),
        "latency_ms": round(rng.random() * 900, 3),
        "ttft_ms": round(rng.random() * 90, 3) if rng.random() < 0.5 else None,
        "estimated": rng.random() < 0.2,
        "prompt_name": rng.choice(["summarize", None]),
        "prompt_version": rng.choice([1, 2, None]),
        "error_code": "rate_limit_exceeded" if failed else None,
    }


def call_rows(count: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [call_row(rng, start + timedelta(microseconds=rng.randrange(3 * 86_400 * 10**6))) for _ in range(count)]


def edge_rows() -> list[dict[str, Any]]:
    """Rows off the common shape, all of which the drivers take as they are."""
    base = call_row(random.Random(1), datetime(2026, 3, 1, 12, tzinfo=UTC))
    long = "x" * 5000
    timestamps: list[Any] = [
        "2026-03-01T23:30:00-02:00",
        "2026-03-01T00:00:00Z",
        "2026-03-01T05:00:00",  # naive text: UTC
        "2026-03-01T05:00:00.000001+00:00",
        datetime(2026, 3, 1, 5, 0),  # naive: UTC
        datetime(2026, 3, 1, 5, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 3, 1, tzinfo=UTC),  # microsecond 0
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    rows: list[dict[str, Any]] = [{**base, "ts": ts} for ts in timestamps]
    rows += [
        {"ts": datetime(2026, 3, 1, 1, tzinfo=UTC), "status": 200},  # defaults for every other column
        {"ts": datetime(2026, 3, 1, 2, tzinfo=UTC), "status": 503, "key_id": "key_x", "id": 12345},  # id ignored
        {**base, **dict.fromkeys(_REF_TEXT_LENGTHS, long)},  # every text column clipped
        {**base, **dict.fromkeys(_REF_TEXT_LENGTHS, long + "y")},  # the same daily group once clipped
        # None and "" are the same roll-up group; the group keeps the last key_name set
        {**base, "team": None, "model": "", "prompt_name": None, "key_name": "first"},
        {**base, "team": "", "model": None, "prompt_name": "", "key_name": None},
        {**base, "team": None, "model": None, "prompt_name": "", "key_name": ""},
        {**base, "estimated": 1, "status": 399},
        {**base, "estimated": 0, "status": 400, "cost_nusd": 2**62},
        {**base, "latency_ms": 5, "ttft_ms": 0, "key_name": "tab\there, quote ' and \\ backslash\nnewline"},
    ]
    return rows


def odd_rows() -> list[list[dict[str, Any]]]:
    """Batches with a value a driver will not take as it is: they go through Core."""
    base = call_row(random.Random(2), datetime(2026, 3, 2, 8, tzinfo=UTC))
    return [
        [base, {**base, "input_tokens": 10.0, "output_tokens": 3.7}],  # floats in integer columns
        [base, {**base, "latency_ms": Decimal("1.5"), "ttft_ms": Decimal("0.25")}],
        [base, {**base, "key_name": 12345}],  # a number in a text column
    ]


def raw_rows(store: Store, table: str) -> list[tuple[Any, ...]]:
    """Every row as the driver reads it, each value with its type (SQLite keeps what it was given)."""
    if table == "usage":
        sql = f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage ORDER BY id"
    else:
        sql = f"SELECT {', '.join(DAILY_COLUMNS)} FROM usage_daily ORDER BY {', '.join(DAILY_KEY_COLUMNS)}"
    with store.engine.connect() as conn:
        return [tuple((type(value).__name__, value) for value in row) for row in conn.exec_driver_sql(sql)]


def assert_same_tables(fast: Store, reference: Store) -> None:
    for table in ("usage", "usage_daily"):
        got, want = raw_rows(fast, table), raw_rows(reference, table)
        assert len(got) == len(want), table
        for got_row, want_row in zip(got, want, strict=True):
            assert got_row == want_row, table


# -- tests ---------------------------------------------------------------------------------------


def test_the_tables_are_exactly_what_the_core_path_wrote(twins: tuple[Store, Store], monkeypatch: Any) -> None:
    fast, reference = twins
    through_core: list[int] = []
    original = Store._insert_usage_core

    def counted(self: Store, *args: Any, **kwargs: Any) -> None:
        through_core.append(len(args[0]))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "_insert_usage_core", counted)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    calls = call_rows(1200, seed=7, start=start)
    replayed = [parse_row_line(line) for line in dump_rows(call_rows(50, seed=8, start=start)).splitlines()]
    batches = [calls[:500], calls[500:1000], edge_rows(), replayed, calls[1000:]]  # the roll-up adds up again
    for batch in batches:
        fast.insert_usage(batch)
        _reference_insert_usage(reference, batch)
    assert through_core == []  # all of it through the drivers
    for batch in odd_rows():
        fast.insert_usage(batch)
        _reference_insert_usage(reference, batch)
    assert_same_tables(fast, reference)
    if fast.dialect == "postgresql":
        assert through_core == [2, 2]  # the floats in bigint columns and the number in a varchar one
    else:
        assert through_core == [2]  # sqlite3 binds no Decimal
    assert fast.cost_report(["key", "day"], None, None) == reference.cost_report(["key", "day"], None, None)


def test_daily_totals_are_the_core_paths_in_key_order() -> None:
    rows = call_rows(2000, seed=3, start=datetime(2026, 3, 1, tzinfo=UTC)) + edge_rows()
    random.Random(4).shuffle(rows)
    want = [
        tuple(entry[column] for column in DAILY_COLUMNS)
        for entry in _reference_daily_totals([_reference_usage_values(row) for row in rows])
    ]
    for micros in (False, True):
        assert build_daily_totals(build_usage_tuples(rows, micros=micros), micros=micros) == want


def test_a_failed_batch_leaves_both_tables_untouched(twins: tuple[Store, Store]) -> None:
    fast, _ = twins
    good = call_rows(150, seed=5, start=datetime(2026, 3, 1, tzinfo=UTC))
    with pytest.raises(SQLAlchemyError):  # NOT NULL, refused by the database in the second 100 rows
        fast.insert_usage([*good, {**good[0], "status": None}])
    with pytest.raises(ValueError, match="estimated"):
        fast.insert_usage([*good, {**good[0], "estimated": 2}])
    with pytest.raises(ValueError, match="cached_tokens"):
        fast.insert_usage([*good, {**good[0], "cached_tokens": 1}])
    assert raw_rows(fast, "usage") == raw_rows(fast, "usage_daily") == []
    fast.insert_usage(good)  # the connection is still good
    assert len(raw_rows(fast, "usage")) == 150


def test_an_int_past_32_bits_is_refused_on_postgresql_as_before(twins: tuple[Store, Store]) -> None:
    fast, reference = twins
    row = {**call_rows(1, seed=6, start=datetime(2026, 3, 1, tzinfo=UTC))[0], "prompt_version": 2**40}
    if fast.dialect != "postgresql":
        fast.insert_usage([row])  # SQLite has no 32-bit columns
        _reference_insert_usage(reference, [row])
        assert_same_tables(fast, reference)
        return
    # The binary COPY would wrap it around silently; Core has PostgreSQL refuse it.
    with pytest.raises(SQLAlchemyError, match="out of range"):
        fast.insert_usage([row])
    assert raw_rows(fast, "usage") == []


def test_postgresql_copy_types_are_the_tables(pg_schema_url: str) -> None:
    store = create_store(pg_schema_url)
    try:
        store.upgrade()
        with store.engine.connect() as conn:
            types = dict(
                conn.execute(
                    text(
                        "SELECT column_name, udt_name FROM information_schema.columns"
                        " WHERE table_schema = current_schema() AND table_name = 'usage'"
                    )
                ).all()
            )
        assert [types[name] for name in USAGE_COLUMNS] == usage_batch.PG_COPY_TYPES
    finally:
        store.close()


def test_a_connection_lost_mid_batch_is_dropped_and_the_next_batch_gets_a_new_one(pg_schema_url: str) -> None:
    store = create_store(pg_schema_url)
    admin = create_engine(make_url(pg_schema_url))
    try:
        store.upgrade()
        rows = call_rows(20, seed=9, start=datetime(2026, 3, 1, tzinfo=UTC))
        killed: list[int] = []

        def kill_after_checkout(dbapi_connection: psycopg.Connection, *_: Any) -> None:
            # After the pool's pre-ping: the server goes away between checkout and COPY.
            if not killed:
                killed.append(dbapi_connection.info.backend_pid)
                with admin.begin() as conn:
                    conn.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": killed[0]})

        event.listen(store.engine.pool, "checkout", kill_after_checkout)
        with pytest.raises(DBAPIError) as caught:
            store.insert_usage(rows)
        # Invalidated where it failed: the error is the server's, not a later rollback's on a dead socket.
        assert caught.value.connection_invalidated
        assert isinstance(caught.value.orig, psycopg.errors.AdminShutdown)
        store.insert_usage(rows)
        assert len(raw_rows(store, "usage")) == 20
        assert store.cost_report([], None, None)[0]["requests"] == 20
    finally:
        store.close()
        admin.dispose()


def test_sqlite_timestamps_are_the_text_sqlalchemy_writes(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path}/ts.db")
    try:
        store.upgrade()
        stamps = [
            datetime(1, 1, 1, tzinfo=UTC),
            datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ]
        store.insert_usage([{"ts": ts, "status": 200} for ts in stamps])
        with store.engine.connect() as conn:
            stored = list(conn.exec_driver_sql("SELECT ts FROM usage ORDER BY id").scalars())
            days = list(conn.exec_driver_sql("SELECT day FROM usage_daily ORDER BY day").scalars())
        # SQLAlchemy's SQLite DATETIME storage format
        assert stored == [
            f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}"
            for t in stamps
        ]
        assert days == [date.isoformat(ts.date()) for ts in stamps]
    finally:
        store.close()


def test_the_inserting_thread_hands_the_gil_over_every_hundred_rows(
    twins: tuple[Store, Store], monkeypatch: Any
) -> None:
    # CPython gives a waiting thread (the event loop) the GIL only when its holder sleeps: after the
    # tuples, after the roll-up totals, then after every 100 rows written. Not timed: the calls only.
    fast, _ = twins
    handed_over: list[int] = []
    monkeypatch.setattr(store_module, "_hand_over_the_gil", lambda: handed_over.append(1))
    fast.insert_usage(call_rows(250, seed=10, start=datetime(2026, 3, 1, tzinfo=UTC)))
    assert len(handed_over) == 2 + 3
    assert len(raw_rows(fast, "usage")) == 250
