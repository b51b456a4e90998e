"""Store fixtures over both backends: SQLite in tmp_path, and PostgreSQL (`pg_url` from tests/conftest.py,
LLMGATE_TEST_PG_URL) in a schema of its own per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmgate.storage import Store, create_store
from tests.storage.schemas import fresh_schema


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    with fresh_schema(pg_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/llmgate.db"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = create_store(database_url)
    store.upgrade()
    yield store
    store.close()
