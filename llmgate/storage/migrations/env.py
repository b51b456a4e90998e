"""Alembic environment: runs on the connection the Store hands over (no alembic.ini needed).

`Store.upgrade()` puts its open connection in `config.attributes["connection"]`;
run by hand (`alembic -c llmgate/storage/migrations/alembic.ini ...`) it falls
back to the `sqlalchemy.url` option.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

from llmgate.storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as conn:
            run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("llmgate migrations run online only (use `llmgate db upgrade`).")
run_migrations()
