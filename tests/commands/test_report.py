"""`llmgate report`: the same exact figures as the store, as a table or CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from llmgate.commands import report
from llmgate.storage import create_store

runner = CliRunner()


def seed(url: str) -> None:
    store = create_store(url)
    store.upgrade()
    now = datetime.now(UTC)
    rows = [
        {"ts": now, "key_id": "key_a", "key_name": "alpha", "model": "m1", "status": 200, "cost_nusd": 1_500_000_001},
        {"ts": now, "key_id": "key_b", "key_name": "beta", "model": "m1", "status": 429, "cost_nusd": 0},
        {"ts": now - timedelta(days=1), "key_id": "key_a", "key_name": "alpha", "model": "m2", "status": 200,
         "cost_nusd": 2},
        {"ts": now - timedelta(days=30), "key_id": "key_c", "key_name": "old", "model": "m1", "status": 200,
         "cost_nusd": 10**12},
    ]  # fmt: skip
    store.insert_usage(rows)
    store.close()


def test_table_by_key_for_the_last_week(config_path: str, cli_database_url: str) -> None:
    seed(cli_database_url)
    result = runner.invoke(report.app, ["--by", "key", "--since", "7d", "--config", config_path])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["key_id", "key_name", "requests", "errors", "input_tokens", "cached_input_tokens",
                                "cache_write_tokens", "output_tokens", "reasoning_tokens", "cost_usd"]  # fmt: skip
    body = {line.split()[0]: line.split() for line in lines[3:-1]}
    assert set(body) == {"key_a", "key_b"}  # key_c's call is a month old
    assert body["key_a"][-1] == "1.500000003" and body["key_b"][3] == "1"
    assert lines[-1] == "Total: 3 requests, 1.500000003 USD"


def test_csv_parses_and_groups_combine(config_path: str, cli_database_url: str) -> None:
    seed(cli_database_url)
    result = runner.invoke(report.app, ["--by", "model,key", "--since", "60d", "--csv", "--config", config_path])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["model"], r["key_id"], r["cost_nusd"]) for r in rows] == [
        ("m1", "key_a", "1500000001"),
        ("m1", "key_b", "0"),
        ("m1", "key_c", "1000000000000"),
        ("m2", "key_a", "2"),
    ]


def test_bad_options_are_named(config_path: str) -> None:
    for args, option in (
        (["--by", "colour"], "--by"),
        (["--since", "last week"], "--since"),
        (["--until", "2026-02-30"], "--until"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since"),
    ):
        result = runner.invoke(report.app, [*args, "--config", config_path])
        assert result.exit_code == 2 and option in result.output, result.output
