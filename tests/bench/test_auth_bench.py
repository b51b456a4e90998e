"""Key authentication: a virtual key from the database, answered from the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmgate.config import parse_settings
from llmgate.keys import StoreAuthenticator
from llmgate.storage import create_store
from tests.bench.conftest import run_now


async def test_cached_virtual_key_lookup(benchmark: Any, tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path / 'keys.db'}")
    store.upgrade()
    record, secret = store.create_key(name="bench", team="bench", rpm=1000)
    settings = parse_settings({"gateway": {"master_key": "sk-master"}, "keys": []}, "bench.toml")
    auth = StoreAuthenticator(store, settings)
    first = await auth.authenticate(secret)  # the miss: loads the key into the cache
    try:
        key = benchmark(lambda: run_now(auth.authenticate(secret)))
    finally:
        store.close()
    assert key is first
    assert (key.id, key.team, key.rpm) == (record["id"], "bench", 1000)
