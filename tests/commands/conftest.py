"""A config file whose database is a fresh SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cli_database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cli.db"


@pytest.fixture
def config_path(tmp_path: Path, cli_database_url: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[gateway]\ndatabase_url = "{cli_database_url}"\n', encoding="utf-8")
    return str(path)
