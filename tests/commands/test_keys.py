"""`llmgate keys create|list|show|revoke` against a real SQLite database."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from llmgate.commands import db, keys, report
from llmgate.keys import hash_secret
from llmgate.storage import create_store

runner = CliRunner()


def test_create_prints_the_secret_once_and_stores_its_hash(config_path: str, cli_database_url: str) -> None:
    result = runner.invoke(
        keys.app,
        ["create", "--name", "svc", "--team", "search", "--models", "a, b", "--rpm", "60", "--tpm", "1000",
         "--budget-usd", "12.50", "--budget-period", "week", "--priority", "batch", "--config", config_path],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    secret = result.output.strip().splitlines()[-1]
    assert secret.startswith("sk-lg-")
    store = create_store(cli_database_url)
    try:
        record = store.get_key_by_hash(hash_secret(secret))
    finally:
        store.close()
    assert record is not None and record["id"] in result.output
    assert (record["team"], record["models"], record["rpm"], record["tpm"]) == ("search", ["a", "b"], 60, 1000)
    assert (record["budget_usd"], record["budget_period"], record["priority"]) == ("12.50", "week", "batch")

    listed = runner.invoke(keys.app, ["list", "--config", config_path])
    shown = runner.invoke(keys.app, ["show", record["id"], "--config", config_path])
    assert listed.exit_code == shown.exit_code == 0
    assert record["id"] in listed.output and "svc" in listed.output and record["display_prefix"] in listed.output
    assert json.loads(shown.output)["id"] == record["id"]
    for output in (listed.output, shown.output):
        assert secret not in output


def test_create_refuses_bad_fields_naming_the_option(config_path: str) -> None:
    for args, option in ((["--rpm", "-5"], "--rpm"), (["--budget-period", "year"], "--budget-period")):
        result = runner.invoke(keys.app, ["create", "--name", "x", *args, "--config", config_path])
        assert result.exit_code == 2
        assert option in result.output


def test_revoke_hides_the_key_from_the_list(config_path: str) -> None:
    created = runner.invoke(keys.app, ["create", "--name", "gone", "--json", "--config", config_path])
    key = json.loads(created.output)
    assert key["key"].startswith("sk-lg-")
    revoked = runner.invoke(keys.app, ["revoke", key["id"], "--config", config_path])
    assert revoked.exit_code == 0 and "Revoked" in revoked.output
    assert key["id"] not in runner.invoke(keys.app, ["list", "--config", config_path]).output
    assert key["id"] in runner.invoke(keys.app, ["list", "--all", "--config", config_path]).output
    assert json.loads(runner.invoke(keys.app, ["show", key["id"], "--config", config_path]).output)["revoked"]


def test_unknown_ids_and_bad_configs_fail_clearly(config_path: str, tmp_path) -> None:
    for command in ("show", "revoke"):
        result = runner.invoke(keys.app, [command, "key_nope", "--config", config_path])
        assert result.exit_code == 1 and "key_nope" in result.output
    missing = runner.invoke(keys.app, ["list", "--config", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "file not found" in missing.output


def test_mounted_under_the_main_cli(config_path: str) -> None:
    cli = typer.Typer()
    cli.add_typer(keys.app, name="keys")
    cli.add_typer(report.app, name="report")
    cli.add_typer(db.app, name="db")
    assert runner.invoke(cli, ["db", "upgrade", "--config", config_path]).exit_code == 0
    assert runner.invoke(cli, ["keys", "create", "--name", "m", "--config", config_path]).exit_code == 0
    result = runner.invoke(cli, ["report", "--by", "key", "--since", "7d", "--config", config_path])
    assert result.exit_code == 0, result.output
    assert "Total: 0 requests" in result.output
