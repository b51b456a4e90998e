"""The Alembic migrations build exactly the schema of the table models, and re-running them keeps data."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from llmgate.storage import Store, create_store
from llmgate.storage.models import UsageRow
from llmgate.storage.usage_batch import _usage_values

TABLES = {"keys", "teams", "usage", "usage_daily", "prompt_versions", "prompt_labels"}
HEAD = "0002"


def test_upgrade_creates_every_table_and_index(store: Store) -> None:
    inspector = inspect(store.engine)
    assert set(inspector.get_table_names()) >= TABLES | {"alembic_version"}
    usage_indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("usage")}
    assert usage_indexes == {"ix_usage_ts_key_id": ["ts", "key_id"], "ix_usage_key_id_ts": ["key_id", "ts"]}
    daily_indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("usage_daily")}
    assert daily_indexes == {"ix_usage_daily_key_id_day": ["key_id", "day"]}
    key_indexes = {ix["name"]: bool(ix["unique"]) for ix in inspector.get_indexes("keys")}
    assert key_indexes == {"ix_keys_key_hash": True, "ix_keys_team": False}
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == HEAD


def test_migrated_schema_matches_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []


def test_rerunning_upgrade_is_a_no_op_that_keeps_data(store: Store, database_url: str) -> None:
    record, _ = store.create_key(name="kept")
    store.insert_usage([{"ts": datetime.now(UTC), "key_id": record["id"], "status": 200, "cost_nusd": 7}])
    store.upgrade()
    again = create_store(database_url)
    try:
        again.upgrade()
        assert again.get_key(record["id"])["name"] == "kept"
        assert again.cost_report([], None, None)[0]["cost_nusd"] == 7
    finally:
        again.close()


def test_upgrading_from_0001_rolls_up_the_calls_already_recorded(database_url: str) -> None:
    store = create_store(database_url)
    try:
        store.upgrade("0001")
        calls = [
            {"ts": datetime(2026, 4, 1, 23, 59, tzinfo=UTC), "key_id": "key_a", "key_name": "a", "team": "red"},
            {"ts": datetime(2026, 4, 1, 0, 0, tzinfo=UTC), "key_id": "key_a", "key_name": "a", "status": 500},
            {"ts": datetime(2026, 4, 2, 0, 0, tzinfo=UTC), "key_id": None, "model": "m", "prompt_name": "p"},
        ]
        rows = [
            {**_usage_values({"status": 200, "input_tokens": 11, "output_tokens": 3, "cost_nusd": 10**10 + i, **c})}
            for i, c in enumerate(calls)
        ]
        with store.engine.begin() as conn:  # written by a 0001 gateway: no roll-up yet
            conn.execute(UsageRow.__table__.insert(), rows)
        store.add_prompt_version("kept", {"model": "m"}, "file:prompts/kept.toml")
        store.upgrade()
        assert store.get_prompt_version("kept", 1)["source"] == "file:prompts/kept.toml"
        by_day_key = store.cost_report(["day", "key", "team", "model", "prompt"], None, None)
        assert [
            (r["day"], r["key_id"], r["team"], r["prompt_name"], r["requests"], r["errors"]) for r in by_day_key
        ] == [
            ("2026-04-01", "key_a", None, None, 1, 1),
            ("2026-04-01", "key_a", "red", None, 1, 0),
            ("2026-04-02", None, None, "p", 1, 0),
        ]
        [total] = store.cost_report([], None, None)
        assert total["cost_nusd"] == 3 * 10**10 + 3 and total["input_tokens"] == 33 and total["requests"] == 3
        store.insert_usage([{**calls[0], "status": 200, "cost_nusd": 5}])  # the roll-up keeps adding up
        assert store.cost_report([], None, None)[0]["cost_nusd"] == 3 * 10**10 + 8
    finally:
        store.close()


def test_instances_starting_together_migrate_once(pg_schema_url: str) -> None:
    stores = [create_store(pg_schema_url) for _ in range(3)]
    failures: list[BaseException] = []

    def upgrade(s: Store) -> None:
        try:
            s.upgrade()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=upgrade, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert failures == []
        assert set(inspect(stores[0].engine).get_table_names()) >= TABLES
    finally:
        for s in stores:
            s.close()
