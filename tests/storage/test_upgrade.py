"""Store.upgrade: Alembic only when the schema is behind, and safe when processes start together."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmgate.storage import create_store
from llmgate.storage.store import MIGRATIONS_DIR, head_revisions


def test_head_revisions_come_from_the_migration_files() -> None:
    newest = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("0*.py"))[-1]
    assert head_revisions() == frozenset({newest.split("_", 1)[0]})


def test_schema_revisions_before_and_after_upgrade(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        assert store.schema_revisions() == frozenset()
        store.upgrade()
        assert store.schema_revisions() == head_revisions()
    finally:
        store.close()


def test_a_current_schema_does_not_load_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create_store(url).upgrade()
    probe = (
        "import sys; from llmgate.storage import create_store; "
        f"s = create_store({url!r}); s.upgrade(); s.close(); print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stores_upgrading_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    stores = [create_store(url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(lambda s: s.upgrade(), stores))
        assert all(s.schema_revisions() == head_revisions() for s in stores)
    finally:
        for s in stores:
            s.close()
