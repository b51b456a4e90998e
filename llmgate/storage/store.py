"""Every query the gateway makes, behind one synchronous `Store` (async callers use asyncio.to_thread).

SQLite (the embedded default) and PostgreSQL (several instances) behave the same:
all SQL is built by SQLAlchemy from the table models, never from hand-written
strings. The one hot write, a batch of usage records, goes through the driver
(SQLite's executemany, PostgreSQL's binary COPY; see `insert_usage`) with
statements generated from the same models. Each batch is also added to a daily
roll-up (`usage_daily`) in the same transaction; reports sum the roll-up in SQL,
so they stay fast however many calls a year holds, and since every figure is an
integer (nano-USD, tokens) a report's total is exactly the sum of its calls. The schema is owned by the
Alembic migrations in migrations/, which `upgrade()` runs to head without any
file on disk beyond the package.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from time import monotonic, sleep
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    ColumnElement,
    Engine,
    String,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    inspect,
    literal,
    literal_column,
    select,
    table,
)
from sqlalchemy import column as sql_column
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from llmgate.cost import format_usd
from llmgate.keys import display_prefix, generate_key_id, generate_secret, hash_secret
from llmgate.storage.models import (
    USAGE_COLUMNS,
    KeyRow,
    PromptLabelRow,
    PromptVersionRow,
    TeamRow,
    UsageDailyRow,
    UsageRow,
    utc_now,
)
from llmgate.storage.usage_batch import (
    DAILY_COLUMNS,
    DAILY_KEY_COLUMNS,
    EPOCH,
    MICROSECOND,
    PG_COPY_TYPES,
    REPORT_TOTAL_FIELDS,
    build_daily_totals,
    build_usage_tuples,
    fits_binary_copy,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Fields an operator may set on a key or a team; everything else (id, hash, revoked, ...) is the store's.
KEY_FIELDS = frozenset(
    {
        "name",
        "team",
        "models",
        "prompts",
        "rpm",
        "rps",
        "tpm",
        "tpd",
        "max_concurrency",
        "max_wait_ms",
        "budget_usd",
        "budget_period",
        "priority",
        "expires_at",
        "metadata",
    }
)
TEAM_FIELDS = frozenset({"description", "rpm", "tpm", "budget_usd", "budget_period", "metadata"})
GROUP_BY_CHOICES = ("key", "team", "model", "day", "prompt")
# The columns each group_by choice adds to a report row.
REPORT_GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "key": ("key_id", "key_name"),
    "team": ("team",),
    "model": ("model",),
    "day": ("day",),
    "prompt": ("prompt_name",),
}
# Two instances adding a prompt version at once both pick max+1; the loser retries.
_VERSION_ATTEMPTS = 5
_REVISION_LINE = re.compile(r'^revision(?:: str)? = "([^"]+)"', re.MULTILINE)
_DOWN_REVISION_LINE = re.compile(r'^down_revision(?:: [^=]+)? = "([^"]+)"', re.MULTILINE)
_ALEMBIC_VERSION = table("alembic_version", sql_column("version_num", String))
# Only PostgreSQL needs it: two instances starting at once must not both run the migrations.
_MIGRATION_LOCK_ID = 0x6C6C6D67617465


class DuplicateError(Exception):
    """The record already exists (a team name taken)."""


class MissingError(LookupError):
    """A record the call refers to does not exist."""


class Store:
    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.engine = _build_engine(database_url)
        self.dialect = self.engine.dialect.name

    # -- lifecycle -------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Run the migrations up to `revision`; a no-op when the schema is current, data kept.

        Whether the schema is at head is read from `alembic_version` with plain
        SQLAlchemy first: importing Alembic costs ~0.4 s of start-up, needed only
        when there is something to migrate.
        """
        if revision == "head" and self.schema_revisions() == head_revisions():
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
            elif self.dialect == "sqlite":
                # pysqlite runs DDL outside a transaction unless one is open: without this, two
                # processes starting on a new file both create the tables and one fails.
                conn.exec_driver_sql("BEGIN EXCLUSIVE")
            config.attributes["connection"] = conn
            command.upgrade(config, revision)

    def schema_revisions(self) -> frozenset[str]:
        """The Alembic revisions the database is at (empty before the first migration)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return frozenset()
            return frozenset(conn.execute(select(_ALEMBIC_VERSION.c.version_num)).scalars())

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(select(literal(1)))
        except Exception:
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -- keys --------------------------------------------------------------------------------------

    def create_key(self, **fields: Any) -> tuple[dict[str, Any], str]:
        """A new key from operator fields (`name` required); returns (record, secret).
        The secret exists only in this return value."""
        values = _key_values(fields)
        if not values.get("name"):
            raise ValueError("a key needs a name")
        secret = generate_secret()
        now = utc_now()
        row = KeyRow(
            id=generate_key_id(),
            key_hash=hash_secret(secret),
            display_prefix=display_prefix(secret),
            created_at=now,
            updated_at=now,
            **values,
        )
        with self._session() as session:
            session.add(row)
        return _key_record(row), secret

    def get_key(self, key_id: str) -> dict[str, Any] | None:
        with self._session() as session:
            row = session.get(KeyRow, key_id)
            return _key_record(row) if row is not None else None

    def get_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        with self._session() as session:
            row = session.scalars(select(KeyRow).where(KeyRow.key_hash == key_hash)).first()
            return _key_record(row) if row is not None else None

    def list_keys(self, team: str | None = None, include_revoked: bool = False) -> list[dict[str, Any]]:
        stmt = select(KeyRow).order_by(KeyRow.created_at, KeyRow.id)
        if team is not None:
            stmt = stmt.where(KeyRow.team == team)
        if not include_revoked:
            stmt = stmt.where(KeyRow.revoked.is_(False))
        with self._session() as session:
            return [_key_record(row) for row in session.scalars(stmt)]

    def update_key(self, key_id: str, **fields: Any) -> dict[str, Any] | None:
        """Set the given operator fields (None clears one); None when there is no such key."""
        values = _key_values(fields)
        if "name" in values and not values["name"]:
            raise ValueError("a key needs a name")
        with self._session() as session:
            row = session.get(KeyRow, key_id)
            if row is None:
                return None
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = utc_now()
            return _key_record(row)

    def revoke_key(self, key_id: str) -> dict[str, Any] | None:
        """Mark a key revoked for good (kept for reports); None when there is no such key."""
        with self._session() as session:
            row = session.get(KeyRow, key_id)
            if row is None:
                return None
            if not row.revoked:
                row.revoked = True
                row.revoked_at = row.updated_at = utc_now()
            return _key_record(row)

    # -- teams -------------------------------------------------------------------------------------

    def create_team(self, name: str, **fields: Any) -> dict[str, Any]:
        row = TeamRow(name=name, created_at=utc_now(), **_team_values(fields))
        try:
            with self._session() as session:
                session.add(row)
        except IntegrityError as exc:
            raise DuplicateError(f"team {name!r} already exists") from exc
        return _team_record(row)

    def get_team(self, name: str) -> dict[str, Any] | None:
        with self._session() as session:
            row = session.get(TeamRow, name)
            return _team_record(row) if row is not None else None

    def list_teams(self) -> list[dict[str, Any]]:
        with self._session() as session:
            return [_team_record(row) for row in session.scalars(select(TeamRow).order_by(TeamRow.name))]

    def update_team(self, name: str, **fields: Any) -> dict[str, Any] | None:
        values = _team_values(fields)
        with self._session() as session:
            row = session.get(TeamRow, name)
            if row is None:
                return None
            for field, value in values.items():
                setattr(row, field, value)
            return _team_record(row)

    def delete_team(self, name: str) -> bool:
        """Remove a team; its keys keep the team name (usage stays grouped under it)."""
        with self._session() as session:
            return session.execute(delete(TeamRow).where(TeamRow.name == name)).rowcount > 0

    # -- usage -------------------------------------------------------------------------------------

    def insert_usage(self, rows: list[dict[str, Any]]) -> None:
        """Insert one batch of usage records, and add them to the daily roll-up, in one transaction;
        raises on failure (the caller retries). `ts` may be an aware datetime or an ISO 8601 string.

        The usage writer calls this in a worker thread for every batch while the event loop serves
        requests on the same GIL, so the per-row work stays in C: each row becomes a tuple through
        one itemgetter (`build_usage_tuples`), the driver writes the tuples itself (SQLite's
        executemany, PostgreSQL's binary COPY) and the roll-up is summed per group with zip and
        sum (`build_daily_totals`). A value the driver will not take as it is (a float token count,
        say) sends the batch through SQLAlchemy Core instead, which converts it as it always did."""
        if not rows:
            return
        micros = self.dialect == "sqlite"
        batch = build_usage_tuples(rows, micros=micros)
        _hand_over_the_gil()
        daily = build_daily_totals(batch, micros=micros)
        _hand_over_the_gil()
        try:
            if micros:
                self._insert_usage_sqlite(batch, daily)
            else:
                self._insert_usage_postgresql(batch, daily)
        except _DriverRefused:
            self._insert_usage_core(batch, daily, micros=micros)

    def _insert_usage_sqlite(self, batch: list[tuple[Any, ...]], daily: list[tuple[Any, ...]]) -> None:
        # sqlite3 runs executemany's loop in C and releases the GIL in each sqlite3_step.
        with self._driver_transaction() as driver:
            try:
                for start in range(0, len(batch), _ROWS_PER_GIL_HOLD):
                    driver.executemany(_SQLITE_INSERT_USAGE, batch[start : start + _ROWS_PER_GIL_HOLD])
                    _hand_over_the_gil()
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError) as exc:
                raise _DriverRefused from exc  # a value sqlite3 cannot bind (a Decimal, an int past 64 bits)
            driver.executemany(_SQLITE_ADD_TO_DAILY, [(day.isoformat(), *rest) for day, *rest in daily])

    def _insert_usage_postgresql(self, batch: list[tuple[Any, ...]], daily: list[tuple[Any, ...]]) -> None:
        try:
            totals = orjson.dumps([dict(zip(DAILY_COLUMNS, group, strict=True)) for group in daily]).decode()
        except TypeError as exc:
            raise _DriverRefused from exc  # an int past 64 bits
        if not fits_binary_copy(batch):
            raise _DriverRefused
        with self._driver_transaction() as driver, driver.cursor() as cursor:
            try:
                with cursor.copy(_PG_COPY_USAGE) as copy:
                    copy.set_types(PG_COPY_TYPES)
                    write_row = copy.write_row
                    for start in range(0, len(batch), _ROWS_PER_GIL_HOLD):
                        for row in batch[start : start + _ROWS_PER_GIL_HOLD]:
                            write_row(row)
                        _hand_over_the_gil()
            except (TypeError, ValueError, OverflowError) as exc:
                raise _DriverRefused from exc  # a value of another type than its column's: psycopg dumps none
            cursor.execute(_PG_ADD_TO_DAILY, {"totals": totals})

    def _insert_usage_core(self, batch: list[tuple[Any, ...]], daily: list[tuple[Any, ...]], micros: bool) -> None:
        """The batch through SQLAlchemy Core, whose bind processors and casts convert odd values."""
        rows = [dict(zip(USAGE_COLUMNS, row, strict=True)) for row in batch]
        if micros:
            for row in rows:
                row["ts"] = EPOCH + row["ts"] * MICROSECOND
        with self.engine.begin() as conn:
            conn.execute(UsageRow.__table__.insert(), rows)
            conn.execute(
                _add_to_daily(self.dialect), [dict(zip(DAILY_COLUMNS, totals, strict=True)) for totals in daily]
            )

    @contextmanager
    def _driver_transaction(self) -> Iterator[Any]:
        """The DBAPI connection of a SQLAlchemy transaction, committed when the block ends and rolled
        back when it raises. A driver error comes out as SQLAlchemy's DBAPIError, as Core raises it,
        and a connection found dead is invalidated so the pool never hands it out again."""
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        with self.engine.begin() as conn:
            driver = conn.connection.dbapi_connection
            try:
                yield driver
            except dbapi_error as exc:
                lost = self.engine.dialect.is_disconnect(exc, driver, None)
                if lost:
                    conn.invalidate(exc)
                raise DBAPIError.instance(
                    None, None, exc, dbapi_error, connection_invalidated=lost, dialect=self.engine.dialect
                ) from exc

    def cost_report(
        self,
        group_by: list[str],
        start: date | None,
        end: date | None,
        key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Usage totals per group, summed in SQL over the daily roll-up. `end` is inclusive
        (the whole UTC day). An empty `group_by` gives one row of totals."""
        groups = _unique(group_by)
        unknown = [g for g in groups if g not in GROUP_BY_CHOICES]
        if unknown:
            raise ValueError(f"unknown group_by {unknown[0]!r} (one of: {', '.join(GROUP_BY_CHOICES)})")
        daily = UsageDailyRow.__table__.c
        keyed: list[ColumnElement[Any]] = []
        shown: list[ColumnElement[Any]] = []
        for group in groups:
            if group == "key":
                keyed.append(daily.key_id.label("key_id"))
                # A renamed key stays one row: the group is the id, the name is the latest seen.
                shown.append(func.max(daily.key_name).label("key_name"))
            elif group == "prompt":
                keyed.append(daily.prompt_name.label("prompt_name"))
            else:
                keyed.append(daily[group].label(group))
        totals = [func.coalesce(func.sum(daily[name]), 0).label(name) for name in REPORT_TOTAL_FIELDS]
        stmt = select(*keyed, *shown, *totals)
        if start is not None:
            stmt = stmt.where(daily.day >= start)
        if end is not None:
            stmt = stmt.where(daily.day <= end)
        if key_id is not None:
            stmt = stmt.where(daily.key_id == key_id)
        if keyed:
            stmt = stmt.group_by(*keyed).order_by(*keyed)
        columns = [column for group in groups for column in REPORT_GROUP_COLUMNS[group]]
        with self.engine.connect() as conn:
            return [_report_row(row._mapping, columns) for row in conn.execute(stmt)]

    def spend_by_key(self, since: datetime) -> dict[str, int]:
        """nano-USD spent per key since `since`."""
        return self._sum_since("key_id", ("cost_nusd",), since)

    def spend_by_team(self, since: datetime) -> dict[str, int]:
        """nano-USD spent per team since `since`."""
        return self._sum_since("team", ("cost_nusd",), since)

    def tokens_by_key(self, since: datetime) -> dict[str, int]:
        """Input plus output tokens per key since `since`."""
        return self._sum_since("key_id", ("input_tokens", "output_tokens"), since)

    def _sum_since(self, group: str, amounts: tuple[str, ...], since: datetime) -> dict[str, int]:
        """Whole days from the roll-up, the part-day before the first midnight from the calls."""
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
        first_day = since.date() if since.time() == time.min else since.date() + timedelta(days=1)
        midnight = datetime.combine(first_day, time.min, UTC)
        daily, raw = UsageDailyRow.__table__.c, UsageRow.__table__.c
        from_daily = (
            select(daily[group], func.sum(sum_columns(daily, amounts)))
            .where(daily.day >= first_day, daily[group] != "")
            .group_by(daily[group])
        )
        from_calls = (
            select(raw[group], func.sum(sum_columns(raw, amounts)))
            .where(raw.ts >= since, raw.ts < midnight, raw[group].is_not(None))
            .group_by(raw[group])
        )
        totals: dict[str, int] = {}
        with self.engine.connect() as conn:
            for stmt in (from_daily, from_calls):
                for name, amount in conn.execute(stmt):
                    totals[name] = totals.get(name, 0) + int(amount or 0)
        return totals

    # -- prompts -----------------------------------------------------------------------------------

    def add_prompt_version(self, name: str, document: dict[str, Any], source: str) -> int:
        """Store `document` as the next version of `name`; an unchanged document returns the latest version."""
        document = json.loads(json.dumps(document))
        for attempt in range(_VERSION_ATTEMPTS):
            try:
                with self._session() as session:
                    latest = session.scalars(
                        select(PromptVersionRow)
                        .where(PromptVersionRow.name == name)
                        .order_by(PromptVersionRow.version.desc())
                        .limit(1)
                    ).first()
                    if latest is not None and latest.document == document:
                        return latest.version
                    version = (latest.version if latest is not None else 0) + 1
                    session.add(PromptVersionRow(name=name, version=version, document=document, source=source))
                return version
            except IntegrityError:
                if attempt == _VERSION_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def get_prompt_version(self, name: str, version: int) -> dict[str, Any] | None:
        with self._session() as session:
            row = session.get(PromptVersionRow, (name, version))
            return _prompt_record(row) if row is not None else None

    def latest_prompt_version(self, name: str) -> int | None:
        with self._session() as session:
            return session.scalar(select(func.max(PromptVersionRow.version)).where(PromptVersionRow.name == name))

    def list_prompt_names(self) -> list[str]:
        stmt = select(PromptVersionRow.name).distinct().order_by(PromptVersionRow.name)
        with self._session() as session:
            return list(session.scalars(stmt))

    def list_prompt_versions(self, name: str) -> list[dict[str, Any]]:
        stmt = select(PromptVersionRow).where(PromptVersionRow.name == name).order_by(PromptVersionRow.version)
        with self._session() as session:
            return [_prompt_record(row) for row in session.scalars(stmt)]

    def set_prompt_label(self, name: str, label: str, version: int) -> None:
        """Point `label` at `version` of `name`; raises MissingError for an unknown version."""
        with self._session() as session:
            if session.get(PromptVersionRow, (name, version)) is None:
                raise MissingError(f"prompt {name!r} has no version {version}")
            row = session.get(PromptLabelRow, (name, label))
            if row is None:
                session.add(PromptLabelRow(name=name, label=label, version=version))
            else:
                row.version = version

    def prompt_labels(self, name: str) -> dict[str, int]:
        stmt = select(PromptLabelRow.label, PromptLabelRow.version).where(PromptLabelRow.name == name)
        with self._session() as session:
            return {label: version for label, version in session.execute(stmt)}

    def delete_prompt(self, name: str) -> bool:
        """Delete every version and label of a prompt; False when there was none."""
        with self._session() as session:
            session.execute(delete(PromptLabelRow).where(PromptLabelRow.name == name))
            deleted = session.execute(delete(PromptVersionRow).where(PromptVersionRow.name == name))
            return deleted.rowcount > 0


def head_revisions() -> frozenset[str]:
    """The head revisions of migrations/versions, read from the files (no Alembic import)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text()
        if found := _REVISION_LINE.search(text):
            revisions.add(found.group(1))
        if found := _DOWN_REVISION_LINE.search(text):
            parents.add(found.group(1))
    return frozenset(revisions - parents)


def create_store(database_url: str) -> Store:
    """A Store for a SQLAlchemy URL (`sqlite:///path` or `postgresql+psycopg://...`).
    Call `upgrade()` before first use to create or migrate the schema."""
    return Store(database_url)


def _build_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    in_memory = url.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if in_memory else None,
    )
    if not in_memory:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# Switching a new file to WAL takes an exclusive lock and does not wait on SQLite's busy
# handler: workers opening the same new file at once see "database is locked" and retry.
_WAL_SWITCH_WAIT_S = 10.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the usage writer, the admin API and other worker processes share the file.
    cursor = dbapi_connection.cursor()
    deadline = monotonic() + _WAL_SWITCH_WAIT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or monotonic() > deadline:
                raise
            sleep(0.01)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sum_columns(columns: Any, names: tuple[str, ...]) -> ColumnElement[Any]:
    total: ColumnElement[Any] = columns[names[0]]
    for name in names[1:]:
        total = total + columns[name]
    return total


def _report_row(mapping: Any, columns: list[str]) -> dict[str, Any]:
    # The roll-up keeps "" for a missing key, team, model or prompt; reports show null.
    row = {column: mapping[column] or None for column in columns}
    if row.get("day") is not None:
        row["day"] = row["day"].isoformat()
    for name in REPORT_TOTAL_FIELDS:
        row[name] = int(mapping[name] or 0)  # PostgreSQL sums bigints as numeric
    row["cost_usd"] = format_usd(row["cost_nusd"])
    return row


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _decimal_text(value: Any) -> str | None:
    if value is None:
        return None
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"budget_usd must be a non-negative amount, got {value!r}")
    return f"{amount:f}"


def _operator_values(fields: dict[str, Any], allowed: frozenset[str], what: str) -> dict[str, Any]:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field {unknown[0]!r}")
    values = dict(fields)
    if "metadata" in values:
        values["meta"] = values.pop("metadata")
    if "budget_usd" in values:
        values["budget_usd"] = _decimal_text(values["budget_usd"])
    return values


def _key_values(fields: dict[str, Any]) -> dict[str, Any]:
    values = _operator_values(fields, KEY_FIELDS, "key")
    for name in ("models", "prompts"):
        if values.get(name) is not None:
            values[name] = list(values[name])
    return values


def _team_values(fields: dict[str, Any]) -> dict[str, Any]:
    return _operator_values(fields, TEAM_FIELDS, "team")


def _key_record(row: KeyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "display_prefix": row.display_prefix,
        "team": row.team,
        "models": row.models,
        "prompts": row.prompts,
        "rpm": row.rpm,
        "rps": row.rps,
        "tpm": row.tpm,
        "tpd": row.tpd,
        "max_concurrency": row.max_concurrency,
        "max_wait_ms": row.max_wait_ms,
        "budget_usd": row.budget_usd,
        "budget_period": row.budget_period,
        "priority": row.priority,
        "expires_at": row.expires_at,
        "metadata": row.meta,
        "revoked": row.revoked,
        "revoked_at": row.revoked_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _team_record(row: TeamRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "description": row.description,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "budget_usd": row.budget_usd,
        "budget_period": row.budget_period,
        "metadata": row.meta,
        "created_at": row.created_at,
    }


def _prompt_record(row: PromptVersionRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "document": row.document,
        "source": row.source,
        "created_at": row.created_at,
    }


# -- usage batches, as the drivers take them (the tuples and totals are built in usage_batch.py) -----
#
# The COPY and the SQLite INSERT are written from the table models' column names and types: COPY and
# the SQLite `ts` expression have no Core form. Everything else is compiled by SQLAlchemy.

# SQLAlchemy keeps a SQLite DATETIME as naive-UTC text, 'YYYY-MM-DD HH:MM:SS.ffffff'. SQLite writes that
# same text from the microseconds since the epoch (floored to whole seconds first, so times before 1970
# work too), which spares the worker thread ~0.6 us of isoformat per row.
_SQLITE_TS = (
    "strftime('%Y-%m-%d %H:%M:%S', (?1 - (?1 % 1000000 + 1000000) % 1000000) / 1000000, 'unixepoch')"
    " || printf('.%06d', (?1 % 1000000 + 1000000) % 1000000)"
)
_SQLITE_INSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) "
    f"VALUES ({', '.join([_SQLITE_TS, *(f'?{n}' for n in range(2, len(USAGE_COLUMNS) + 1))])})"
)
_PG_COPY_USAGE = f"COPY usage ({', '.join(USAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _add_to_daily(dialect_name: str, from_json: bool = False) -> Any:
    """An upsert adding a batch's daily totals to `usage_daily` (both backends speak ON CONFLICT).
    `from_json` (PostgreSQL): every group in one parameter, a JSON array of objects, which costs
    one statement instead of one per group."""
    table = UsageDailyRow.__table__
    stmt = (postgresql_insert if dialect_name == "postgresql" else sqlite_insert)(table)
    if from_json:
        records = func.json_populate_recordset(literal_column(f"NULL::{table.name}"), bindparam("totals", type_=JSON))
        stmt = stmt.from_select(DAILY_COLUMNS, select(*map(sql_column, DAILY_COLUMNS)).select_from(records))
    added = {name: table.c[name] + stmt.excluded[name] for name in REPORT_TOTAL_FIELDS}
    return stmt.on_conflict_do_update(
        index_elements=list(DAILY_KEY_COLUMNS),
        set_={**added, "key_name": func.coalesce(stmt.excluded.key_name, table.c.key_name)},
    )


_SQLITE_ADD_TO_DAILY = str(_add_to_daily("sqlite").compile(dialect=sqlite_dialect()))
# json_populate_recordset returns the groups in array order, so the roll-up rows are locked in key order.
_PG_ADD_TO_DAILY = str(_add_to_daily("postgresql", from_json=True).compile(dialect=psycopg_dialect()))


# Rows written between two hand-overs of the GIL: ~0.5 ms of work on SQLite, ~0.1 ms on PostgreSQL
# (building the tuples or the totals of a 500-row batch takes ~0.35 ms each, with one hand-over after each).
_ROWS_PER_GIL_HOLD = 100


def _hand_over_the_gil() -> None:
    """Let a thread waiting for the GIL (the event loop) take it. CPython hands the GIL over only if
    its holder stays off it for longer than the waiter takes to wake up, which the short releases
    inside each sqlite3_step or socket write never do: without this the loop can wait for the whole
    insert. A zero sleep lasts the timer slack (~50 us) and costs no CPU."""
    sleep(0)


class _DriverRefused(Exception):
    """The driver cannot take a value of the batch as it is; SQLAlchemy Core can convert it."""
