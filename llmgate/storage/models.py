"""The database tables, as SQLModel table models (and nothing else).

These are storage shapes, kept apart from the admin API's request and reply
schemas (llmgate/surfaces/admin.py). Every timestamp is UTC: `UTCDateTime`
stores aware datetimes on PostgreSQL (timestamptz) and naive-UTC text on
SQLite, and always hands back aware UTC datetimes. Money is exact: usage cost
is an integer of nano-USD, budgets a decimal string.

The migrations in migrations/versions/ create the same schema;
tests/storage/test_migrations.py checks that the two never drift apart.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Date, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend; also binds ISO 8601 strings."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime or an ISO 8601 string, got {type(value).__name__}")
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite keeps no zone: store naive UTC so text comparison orders correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# 64-bit on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


def utc_now() -> datetime:
    return datetime.now(UTC)


class KeyRow(SQLModel, table=True):
    """A virtual key. The secret itself is never stored: only its sha256 and a display prefix."""

    __tablename__ = "keys"
    __table_args__ = (
        Index("ix_keys_key_hash", "key_hash", unique=True),
        Index("ix_keys_team", "team"),
    )

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    key_hash: str = Field(sa_column=Column(String(64), nullable=False))
    display_prefix: str = Field(sa_column=Column(String(32), nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    team: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    models: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    prompts: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    rpm: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    rps: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    tpm: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    tpd: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    max_concurrency: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    max_wait_ms: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    budget_usd: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))
    budget_period: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    priority: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON, nullable=True))
    revoked: bool = Field(default=False, nullable=False)
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(default_factory=utc_now, sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(default_factory=utc_now, sa_column=Column(UTCDateTime(), nullable=False))


class TeamRow(SQLModel, table=True):
    """A team: a grouping of keys with its own limits and budget."""

    __tablename__ = "teams"

    name: str = Field(sa_column=Column(String(200), primary_key=True))
    description: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))
    rpm: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    tpm: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    budget_usd: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))
    budget_period: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    meta: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON, nullable=True))
    created_at: datetime = Field(default_factory=utc_now, sa_column=Column(UTCDateTime(), nullable=False))


class UsageRow(SQLModel, table=True):
    """One record per call. `ts` and `key_id` each lead one composite index, which
    serves both the report's date-range scan and a key's own figures."""

    __tablename__ = "usage"
    __table_args__ = (
        Index("ix_usage_ts_key_id", "ts", "key_id"),
        Index("ix_usage_key_id_ts", "key_id", "ts"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigIntId, primary_key=True, autoincrement=True))
    ts: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    request_id: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    key_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    key_name: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    team: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    surface: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    model: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    deployment: str | None = Field(default=None, sa_column=Column(String(400), nullable=True))
    provider: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    status: int = Field(sa_column=Column(Integer, nullable=False))
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cached_input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cache_write_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    reasoning_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cost_nusd: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    latency_ms: float = Field(default=0.0, nullable=False)
    ttft_ms: float | None = Field(default=None, nullable=True)
    estimated: bool = Field(default=False, nullable=False)
    prompt_name: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    prompt_version: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    error_code: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))


class UsageDailyRow(SQLModel, table=True):
    """Usage summed per UTC day, key, team, model and prompt, kept in step with `usage` by
    `Store.insert_usage` (same transaction). Reports read this, not the raw calls, so a year
    for a thousand keys is at most days x keys x models rows however many calls were made.
    A missing key, team, model or prompt is stored as "" (primary-key columns cannot be NULL)."""

    __tablename__ = "usage_daily"
    __table_args__ = (Index("ix_usage_daily_key_id_day", "key_id", "day"),)

    day: date = Field(sa_column=Column(Date, primary_key=True))
    key_id: str = Field(sa_column=Column(String(64), primary_key=True))
    team: str = Field(sa_column=Column(String(200), primary_key=True))
    model: str = Field(sa_column=Column(String(200), primary_key=True))
    prompt_name: str = Field(sa_column=Column(String(200), primary_key=True))
    key_name: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    errors: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cached_input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cache_write_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    reasoning_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cost_nusd: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class PromptVersionRow(SQLModel, table=True):
    """An immutable version of a stored prompt document."""

    __tablename__ = "prompt_versions"

    name: str = Field(sa_column=Column(String(200), primary_key=True))
    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    document: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    source: str = Field(sa_column=Column(Text, nullable=False))  # "api", or "file:<path>" of any length
    created_at: datetime = Field(default_factory=utc_now, sa_column=Column(UTCDateTime(), nullable=False))


class PromptLabelRow(SQLModel, table=True):
    """A movable label (`prod`, `staging`) pointing at one version of a prompt."""

    __tablename__ = "prompt_labels"

    name: str = Field(sa_column=Column(String(200), primary_key=True))
    label: str = Field(sa_column=Column(String(100), primary_key=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))


USAGE_COLUMNS: tuple[str, ...] = tuple(c.name for c in UsageRow.__table__.columns if c.name != "id")
