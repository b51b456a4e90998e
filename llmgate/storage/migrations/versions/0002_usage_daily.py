"""Daily usage roll-up (`usage_daily`), filled from the calls already recorded; prompt sources of any length.

Reports read the roll-up instead of scanning every call. The backfill sums the
existing `usage` rows in SQL, so an upgrade keeps every figure exact.
`prompt_versions.source` holds file paths, which may be longer than 200 characters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMMED = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nusd",
)


def upgrade() -> None:
    daily = op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("team", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("prompt_name", sa.String(200), primary_key=True),
        sa.Column("key_name", sa.String(200), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _SUMMED),
    )
    op.create_index("ix_usage_daily_key_id_day", "usage_daily", ["key_id", "day"])
    _backfill(daily)
    with op.batch_alter_table("prompt_versions") as batch:
        batch.alter_column("source", type_=sa.Text(), existing_type=sa.String(200), existing_nullable=False)


def _backfill(daily: sa.Table) -> None:
    usage = sa.table(
        "usage",
        sa.column("ts", sa.DateTime(timezone=True)),
        sa.column("key_id", sa.String()),
        sa.column("key_name", sa.String()),
        sa.column("team", sa.String()),
        sa.column("model", sa.String()),
        sa.column("prompt_name", sa.String()),
        sa.column("status", sa.Integer()),
        *(sa.column(name, sa.BigInteger()) for name in _SUMMED),
    )
    if op.get_bind().dialect.name == "postgresql":
        day = sa.cast(sa.func.timezone(sa.literal_column("'UTC'"), usage.c.ts), sa.Date)
    else:
        day = sa.func.date(usage.c.ts)
    keys = [
        day,
        sa.func.coalesce(usage.c.key_id, sa.literal_column("''")),
        sa.func.coalesce(usage.c.team, sa.literal_column("''")),
        sa.func.coalesce(usage.c.model, sa.literal_column("''")),
        sa.func.coalesce(usage.c.prompt_name, sa.literal_column("''")),
    ]
    totals = [
        sa.func.max(usage.c.key_name),
        sa.func.count(),
        sa.func.sum(sa.case((usage.c.status >= 400, 1), else_=0)),
        *(sa.func.sum(usage.c[name]) for name in _SUMMED),
    ]
    columns = ["day", "key_id", "team", "model", "prompt_name", "key_name", "requests", "errors", *_SUMMED]
    op.execute(daily.insert().from_select(columns, sa.select(*keys, *totals).group_by(*keys)))


def downgrade() -> None:
    with op.batch_alter_table("prompt_versions") as batch:
        batch.alter_column("source", type_=sa.String(200), existing_type=sa.Text(), existing_nullable=False)
    op.drop_index("ix_usage_daily_key_id_day", table_name="usage_daily")
    op.drop_table("usage_daily")
