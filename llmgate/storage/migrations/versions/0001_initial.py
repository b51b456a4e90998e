"""Initial schema: keys, teams, usage, prompt versions and labels.

Self-contained on purpose (no import of llmgate.storage.models): a migration
describes the schema as it was at this revision, whatever the models become.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UTC = sa.DateTime(timezone=True)
_BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("display_prefix", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("team", sa.String(200), nullable=True),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("prompts", sa.JSON(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("rps", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("tpd", sa.BigInteger(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("max_wait_ms", sa.Integer(), nullable=True),
        sa.Column("budget_usd", sa.String(40), nullable=True),
        sa.Column("budget_period", sa.String(16), nullable=True),
        sa.Column("priority", sa.String(64), nullable=True),
        sa.Column("expires_at", _UTC, nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", _UTC, nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
    )
    op.create_index("ix_keys_key_hash", "keys", ["key_hash"], unique=True)
    op.create_index("ix_keys_team", "keys", ["team"])

    op.create_table(
        "teams",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("description", sa.String(1000), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("budget_usd", sa.String(40), nullable=True),
        sa.Column("budget_period", sa.String(16), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", _UTC, nullable=False),
    )

    op.create_table(
        "usage",
        sa.Column("id", _BIGINT_ID, primary_key=True, autoincrement=True),
        sa.Column("ts", _UTC, nullable=False),
        sa.Column("request_id", sa.String(200), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("key_name", sa.String(200), nullable=True),
        sa.Column("team", sa.String(200), nullable=True),
        sa.Column("surface", sa.String(32), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("deployment", sa.String(400), nullable=True),
        sa.Column("provider", sa.String(100), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nusd", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("prompt_name", sa.String(200), nullable=True),
        sa.Column("prompt_version", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(100), nullable=True),
    )
    op.create_index("ix_usage_ts_key_id", "usage", ["ts", "key_id"])
    op.create_index("ix_usage_key_id_ts", "usage", ["key_id", "ts"])

    op.create_table(
        "prompt_versions",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
    )

    op.create_table(
        "prompt_labels",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("label", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("prompt_labels")
    op.drop_table("prompt_versions")
    op.drop_index("ix_usage_key_id_ts", table_name="usage")
    op.drop_index("ix_usage_ts_key_id", table_name="usage")
    op.drop_table("usage")
    op.drop_table("teams")
    op.drop_index("ix_keys_team", table_name="keys")
    op.drop_index("ix_keys_key_hash", table_name="keys")
    op.drop_table("keys")
