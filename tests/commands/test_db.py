"""`llmgate db upgrade` creates the schema, and running it again keeps the data."""

from __future__ import annotations

from typer.testing import CliRunner

from llmgate.commands import db
from llmgate.storage import create_store

runner = CliRunner()


def test_upgrade_creates_the_schema_and_keeps_data_when_rerun(config_path: str, cli_database_url: str) -> None:
    first = runner.invoke(db.app, ["upgrade", "--config", config_path])
    assert first.exit_code == 0, first.output
    assert "schema at revision 0002" in first.output
    store = create_store(cli_database_url)
    record, _ = store.create_key(name="survivor")
    store.close()
    assert runner.invoke(db.app, ["upgrade", "--config", config_path]).exit_code == 0
    store = create_store(store.url)
    try:
        assert store.get_key(record["id"])["name"] == "survivor"
    finally:
        store.close()


def test_unreachable_database_fails_without_printing_the_password(tmp_path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[gateway]\ndatabase_url = "postgresql+psycopg://user:hunter2@127.0.0.1:1/nope?connect_timeout=2"\n',
        encoding="utf-8",
    )
    result = runner.invoke(db.app, ["upgrade", "--config", str(config)])
    assert result.exit_code == 1
    assert "cannot open the database" in result.output and "hunter2" not in result.output
