"""A fresh PostgreSQL schema per test, so store tests never see each other's rows (nor other suites')."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


@contextmanager
def fresh_schema(pg_url: str) -> Iterator[str]:
    """A URL like `pg_url` whose search_path is a new, empty schema, dropped afterwards."""
    schema = f"lg_test_{secrets.token_hex(6)}"
    libpq_url = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield (
                make_url(pg_url)
                .update_query_dict({"options": f"-csearch_path={schema}"})
                .render_as_string(hide_password=False)
            )
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
