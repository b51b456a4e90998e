"""Store faults under load: PostgreSQL and Redis stopped and restarted while calls flow.

Each test runs its own throwaway server (tests/reliability/stores.py) so it can
stop it: never the shared services. PostgreSQL down: calls keep flowing, their
usage rows wait in the writer's buffer and spill file, and once the database is
back every answered call has exactly one row. Redis down: `on_store_error =
"open"` keeps admitting against local limits, `"closed"` answers 503 in the
caller's wire format; once Redis is back, limits are shared again.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from tests.harness import GatewayServer, make_settings
from tests.reliability.conftest import FULL, wait_for
from tests.reliability.stores import ThrowawayPostgres, ThrowawayRedis

MASTER = "sk-master-store-faults"
HI = [{"role": "user", "content": "hi"}]
OUTAGE_S = 8.0 if FULL else 2.0


class SdkLoad:
    """Threads calling through the openai SDK until stopped; each call has its own x-request-id."""

    def __init__(self, url: str, key: str, threads: int = 2) -> None:
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
        self.answered: set[str] = set()
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._ids = itertools.count()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, n: int) -> None:
        while not self._stop.is_set():
            rid = f"load-{n}-{next(self._ids)}"
            try:
                self.client.chat.completions.create(model="m", messages=HI, extra_headers={"x-request-id": rid})
            except openai.APIError as exc:
                self.failures.append((time.monotonic(), repr(exc)))
                time.sleep(0.01)
            else:
                self.answered.add(rid)

    @contextmanager
    def running(self) -> Iterator[SdkLoad]:
        for t in self._threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(30)


def new_key(server: GatewayServer, **fields: Any) -> dict[str, Any]:
    resp = httpx.post(
        server.url + "/admin/keys", json={"name": "load", **fields}, headers={"authorization": f"Bearer {MASTER}"}
    )
    resp.raise_for_status()
    return resp.json()


def request_ids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("select request_id from usage where request_id like 'load-%'"))]
    except Exception:
        return []
    finally:
        engine.dispose()


def test_postgres_stopped_and_restarted_under_load_loses_no_usage_record(tmp_path: Path) -> None:
    with ThrowawayPostgres() as pg:
        doc = {
            "gateway": {
                "master_key": MASTER,
                "database_url": pg.url,
                "usage_spill_path": str(tmp_path / "spill.jsonl"),
                "usage_flush_interval_s": 0.1,
                "usage_batch_size": 10,
                "usage_buffer_max": 20,  # a short outage already overflows to the spill file
                "key_cache_ttl_s": 0.5,  # the outage outlasts the key cache: stale entries must serve
            },
            "providers": {"mock": {"type": "mock"}},
            "models": [{"name": "m", "provider": "mock"}],
        }
        with GatewayServer(make_settings(doc)) as server:
            key = new_key(server)
            writer = server.gw.extras["usage_writer"]
            if not FULL:  # retry the database at least every second (default: backoff up to 30 s)
                writer.backoff_max_s = 1.0
            load = SdkLoad(server.url, key["key"])
            with load.running():
                time.sleep(1.0)
                before = len(load.answered)
                pg.stop()
                down_at = time.monotonic()
                time.sleep(OUTAGE_S)
                during = len(load.answered) - before
                pg.start()
                time.sleep(1.0)
            assert not load.failures, f"calls failed while the database was down: {load.failures[:3]}"
            assert during > 20, "calls kept flowing during the outage"
            assert wait_for(lambda: len(request_ids(pg.url)) >= len(load.answered), 60, 0.2), (
                f"{len(request_ids(pg.url))} rows for {len(load.answered)} answered calls; "
                f"writer: {writer.queue_depth} queued, {writer.spilled_total} spilled, {writer.replayed_total} replayed"
            )
            assert wait_for(lambda: writer.queue_depth == 0, 10)
            rows = request_ids(pg.url)
            assert len(rows) == len(set(rows)), "a call recorded twice"
            assert set(rows) == load.answered
            assert writer.spilled_total > 0 and writer.replayed_total > 0
            assert not list(tmp_path.glob("spill.jsonl*")), "the spill file is replayed and removed"
            print(
                f"\npostgres down {OUTAGE_S:.1f} s: {len(rows)} calls ({during} during the outage), all recorded "
                f"{time.monotonic() - down_at:.1f} s after the stop ({writer.spilled_total} spilled and replayed)"
            )


# -- Redis ---------------------------------------------------------------------------------------


def redis_gateway(redis_url: str, mode: str, keys: list[dict[str, Any]]) -> GatewayServer:
    doc = {
        "gateway": {"master_key": MASTER, "redis_url": redis_url, "usage_flush_interval_s": 0.1},
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "m", "provider": "mock"}],
        "limits": {"on_store_error": mode},
        "keys": keys,
    }
    return GatewayServer(make_settings(doc))


def status_of(server: GatewayServer, key: str) -> int:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=10)
    try:
        client.chat.completions.create(model="m", messages=HI)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def shared_limit_holds(a: GatewayServer, b: GatewayServer, key: str, rpm: int) -> list[int]:
    """`rpm` calls alternating over both gateways, then one more on each."""
    return [status_of((a, b)[i % 2], key) for i in range(rpm + 2)]


KEYS = [
    {"key": "sk-free-traffic", "name": "free"},
    {"key": "sk-rpm-before", "name": "before", "rpm": 4},
    {"key": "sk-rpm-after", "name": "after", "rpm": 4},
]


def test_redis_outage_open_keeps_calls_flowing_and_shared_limits_recover() -> None:
    with (
        ThrowawayRedis() as store,
        redis_gateway(store.url, "open", KEYS) as a,
        redis_gateway(store.url, "open", KEYS) as b,
    ):
        assert shared_limit_holds(a, b, "sk-rpm-before", 4) == [200] * 4 + [429, 429]
        load = SdkLoad(a.url, "sk-free-traffic")
        with load.running():
            time.sleep(0.5)
            store.stop()
            time.sleep(OUTAGE_S / 2)
            assert status_of(b, "sk-free-traffic") == 200
            assert not a.gw.limiter.backend.healthy
            store.start()
            time.sleep(OUTAGE_S / 2)
        assert not load.failures, f"calls failed during the Redis outage (open): {load.failures[:3]}"
        assert len(load.answered) > 20
        # Back on the shared counters once both gateways have probed Redis again (every 1 s).
        assert wait_for(lambda: status_of(a, "sk-free-traffic") == 200 and a.gw.limiter.backend.healthy, 5)
        assert wait_for(lambda: status_of(b, "sk-free-traffic") == 200 and b.gw.limiter.backend.healthy, 5)
        assert shared_limit_holds(a, b, "sk-rpm-after", 4) == [200] * 4 + [429, 429]
        assert a.gw.limiter.stats["store_outages"] == 1


def test_redis_outage_closed_answers_503_in_each_wire_format_then_recovers() -> None:
    with ThrowawayRedis() as store, redis_gateway(store.url, "closed", KEYS) as gw:
        assert status_of(gw, "sk-free-traffic") == 200
        store.stop()
        oa = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-free-traffic", max_retries=0)
        with pytest.raises(openai.APIStatusError) as oa_err:
            oa.chat.completions.create(model="m", messages=HI)
        assert oa_err.value.status_code == 503
        body = oa_err.value.response.json()
        assert set(body) == {"error"} and body["error"]["message"]
        an = anthropic.Anthropic(base_url=gw.url, api_key="sk-free-traffic", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as an_err:
            an.messages.create(model="m", max_tokens=20, messages=HI)
        assert an_err.value.status_code == 503
        body = an_err.value.response.json()
        assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"]
        store.start()
        assert wait_for(lambda: status_of(gw, "sk-free-traffic") == 200, 5, 0.2)
        assert gw.gw.limiter.backend.healthy
