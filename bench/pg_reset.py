"""Drop and re-create the bench's PostgreSQL database, so each run starts empty.

python bench/pg_reset.py postgresql+psycopg://postgres@127.0.0.1:5432/llmgate_bench
"""

from __future__ import annotations

import sys

import psycopg
from sqlalchemy.engine import make_url


def reset_database(url: str) -> None:
    parsed = make_url(url)
    name = parsed.database
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing to reset database {name!r}: use a plain name such as llmgate_bench")
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    reset_database(sys.argv[1])
