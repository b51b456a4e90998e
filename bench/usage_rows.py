"""How many usage rows a bench config's database holds (one per settled call).

python bench/usage_rows.py CONFIG.toml
"""

from __future__ import annotations

import sys

from sqlalchemy import create_engine, func, select

from llmgate.config import load_settings
from llmgate.storage.models import UsageRow


def count_usage_rows(config: str) -> int:
    engine = create_engine(load_settings(config).gateway.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(UsageRow)).scalar_one())
    finally:
        engine.dispose()


if __name__ == "__main__":
    print(count_usage_rows(sys.argv[1]))
