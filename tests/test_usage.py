"""UsageWriter: batching, shutdown flush, DB outage and recovery, overflow spill and replay."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from llmgate.errors import UpstreamTimeout
from llmgate.types import KeyInfo, RequestContext, Usage
from llmgate.usage import (
    INSERT_THREAD_NICE,
    USAGE_COLUMNS,
    UsageSinks,
    UsageWriter,
    build_usage_row,
    dump_rows,
    lower_thread_priority,
)


class FakeStore:
    """Stands in for Store.insert_usage: records batches, fails the first `fail_first` calls
    (or every call while `down` is set)."""

    def __init__(self, fail_first: int = 0, fail_calls: set[int] | None = None) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.calls = 0
        self.fail_first = fail_first
        self.fail_calls = fail_calls or set()
        self.down = False

    def insert(self, rows: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.down or self.calls <= self.fail_first or self.calls in self.fail_calls:
            raise ConnectionError("database is down")
        self.batches.append(list(rows))

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for batch in self.batches for row in batch]

    @property
    def request_ids(self) -> list[str]:
        return [row["request_id"] for row in self.rows]


def make_ctx(i: int = 0, **overrides: Any) -> RequestContext:
    ctx = RequestContext(request_id=f"req-{i}", surface="chat", token=None, body={}, model="gpt-4o-mini")
    ctx.key = KeyInfo(id="key-1", name="alice", team="research")
    ctx.deployment = SimpleNamespace(label="openai/gpt-4o-mini", provider=SimpleNamespace(name="openai"))
    ctx.usage = Usage(input_tokens=100 + i, cached_input_tokens=10, output_tokens=20, reasoning_tokens=5)
    ctx.cost_nusd = 1000 + i
    for name, value in overrides.items():
        setattr(ctx, name, value)
    return ctx


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def writer_for(store: FakeStore, tmp_path: Path, **kwargs: Any) -> UsageWriter:
    options: dict[str, Any] = {
        "spill_path": tmp_path / "spill.jsonl",
        "batch_size": 3,
        "flush_interval_s": 10.0,
        "buffer_max": 1000,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
    }
    options.update(kwargs)
    return UsageWriter(store.insert, **options)


def spilled_ids(path: Path) -> list[str]:
    return [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines() if line.strip()]


# --- the row ---------------------------------------------------------------------------


def test_row_has_exactly_the_usage_columns_and_the_context_values() -> None:
    ctx = make_ctx(7, status=200, prompt_name="summarise", prompt_version=3)
    ctx.started = 100.0
    ctx.first_token_at = 100.25
    ctx.started_wall = 1_764_000_000.5
    row = build_usage_row(ctx, now=101.5)
    assert tuple(row) == USAGE_COLUMNS
    assert row["ts"] == datetime.fromtimestamp(1_764_000_000.5, tz=UTC)
    assert row["ts"].utcoffset().total_seconds() == 0
    assert row["latency_ms"] == 1500
    assert row["ttft_ms"] == 250
    assert (row["key_id"], row["key_name"], row["team"]) == ("key-1", "alice", "research")
    assert (row["deployment"], row["provider"]) == ("openai/gpt-4o-mini", "openai")
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        107,
        10,
        20,
        5,
    )
    assert row["cost_nusd"] == 1007 and isinstance(row["cost_nusd"], int)
    assert (row["prompt_name"], row["prompt_version"], row["error_code"]) == ("summarise", 3, None)
    assert row["estimated"] is False


def test_row_of_a_failed_unauthenticated_call() -> None:
    ctx = RequestContext(request_id="r", surface="embeddings", token=None, body={}, model="x")
    ctx.error = UpstreamTimeout("took too long")
    ctx.status = 504
    row = build_usage_row(ctx)
    assert row["key_id"] is None and row["deployment"] is None and row["provider"] is None
    assert row["ttft_ms"] is None
    assert row["error_code"] == "upstream_timeout"
    assert row["status"] == 504
    assert row["input_tokens"] == row["output_tokens"] == row["cost_nusd"] == 0


def test_estimated_usage_is_flagged() -> None:
    ctx = make_ctx(1)
    ctx.usage = Usage(input_tokens=5, output_tokens=3, estimated=True)
    assert build_usage_row(ctx)["estimated"] is True


# --- batching and shutdown -----------------------------------------------------------


async def test_rows_are_written_in_batches_in_order(tmp_path: Path) -> None:
    store = FakeStore()
    writer = writer_for(store, tmp_path, batch_size=3)
    writer.start()
    for i in range(7):
        writer.record(make_ctx(i))
    await wait_until(lambda: len(store.rows) >= 6)  # full batches go without waiting for the interval
    await writer.aclose()
    assert store.request_ids == [f"req-{i}" for i in range(7)]
    assert all(len(batch) <= 3 for batch in store.batches)
    assert writer.written_total == 7 and writer.queue_depth == 0
    assert not (tmp_path / "spill.jsonl").exists()


async def test_a_partial_batch_is_flushed_after_the_interval(tmp_path: Path) -> None:
    store = FakeStore()
    writer = writer_for(store, tmp_path, batch_size=100, flush_interval_s=0.05)
    writer.start()
    writer.record(make_ctx(1))
    await wait_until(lambda: store.request_ids == ["req-1"])
    await writer.aclose()


async def test_aclose_flushes_what_is_buffered(tmp_path: Path) -> None:
    store = FakeStore()
    writer = writer_for(store, tmp_path, batch_size=100, flush_interval_s=60.0)
    writer.start()
    await asyncio.sleep(0.02)  # past the start-up drain
    for i in range(5):
        writer.record(make_ctx(i))
    await asyncio.sleep(0.05)
    assert store.rows == []  # neither a full batch nor the interval yet
    await writer.aclose()
    assert store.request_ids == [f"req-{i}" for i in range(5)]


async def test_record_never_raises_and_counts_a_row_it_cannot_build(tmp_path: Path) -> None:
    store = FakeStore()
    writer = writer_for(store, tmp_path)
    ctx = make_ctx(1)
    ctx.deployment = object()  # no label, no provider
    writer.record(ctx)
    assert writer.dropped_total == 1 and writer.queue_depth == 0


# --- database outage -----------------------------------------------------------------


async def test_db_down_then_back_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    store = FakeStore(fail_first=4)
    writer = writer_for(store, tmp_path, batch_size=4)
    writer.start()
    for i in range(10):
        writer.record(make_ctx(i))
    await wait_until(lambda: len(store.rows) == 10)
    await writer.aclose()
    assert sorted(store.request_ids) == sorted(f"req-{i}" for i in range(10))
    assert len(store.request_ids) == 10
    assert writer.insert_errors_total == 4
    assert writer.dropped_total == 0


async def test_clean_stop_while_db_is_down_spills_everything(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    writer = writer_for(store, tmp_path)
    writer.start()
    for i in range(8):
        writer.record(make_ctx(i))
    await writer.aclose(timeout=2.0)
    assert store.rows == []
    assert sorted(spilled_ids(tmp_path / "spill.jsonl")) == sorted(f"req-{i}" for i in range(8))
    assert writer.spilled_total == 8 and writer.dropped_total == 0 and writer.queue_depth == 0


async def test_overflow_spills_oldest_rows_and_a_restarted_writer_replays_them(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    down = FakeStore()
    down.down = True
    first = writer_for(down, tmp_path, batch_size=2, buffer_max=5)
    first.start()
    for i in range(12):
        first.record(make_ctx(i))
    assert first.queue_depth <= 5 + 2
    assert first.spilled_total >= 7
    assert spilled_ids(spill)[:2] == ["req-0", "req-1"]  # the oldest go first
    await first.aclose(timeout=2.0)
    # The shutdown drain tried a replay (so the oldest rows sit in the replay file), then spilled the rest.
    assert sorted(spilled_ids(spill) + spilled_ids(first.replay_path)) == sorted(f"req-{i}" for i in range(12))

    up = FakeStore()
    second = writer_for(up, tmp_path, batch_size=5)
    second.start()
    second.record(make_ctx(100))
    await wait_until(lambda: len(up.rows) == 13)
    await second.aclose()
    assert sorted(up.request_ids) == sorted([f"req-{i}" for i in range(12)] + ["req-100"])
    assert up.request_ids.index("req-100") == 12  # the spill is replayed before new rows
    assert second.replayed_total == 12
    assert not spill.exists() and not second.replay_path.exists() and not second.offset_path.exists()


async def test_rows_spilled_while_running_are_replayed_when_the_db_returns(tmp_path: Path) -> None:
    store = FakeStore()
    store.down = True
    writer = writer_for(store, tmp_path, batch_size=2, buffer_max=4)
    writer.start()
    for i in range(10):
        writer.record(make_ctx(i))
    assert writer.spilled_total > 0
    store.down = False
    await wait_until(lambda: len(store.rows) == 10)
    await writer.aclose()
    assert sorted(store.request_ids) == sorted(f"req-{i}" for i in range(10))
    assert not writer.spill_path.exists()


async def test_a_spill_file_left_by_a_previous_run_is_replayed_at_start(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    rows = [build_usage_row(make_ctx(i)) for i in range(7)]
    spill.write_bytes(dump_rows(rows))
    store = FakeStore()
    writer = writer_for(store, tmp_path, batch_size=3)
    writer.start()
    await wait_until(lambda: len(store.rows) == 7)
    await writer.aclose()
    assert store.rows == rows  # datetimes come back as equal aware datetimes
    assert all(len(batch) <= 3 for batch in store.batches)
    assert not spill.exists()


async def test_a_replay_failing_half_way_resumes_without_duplicates(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.write_bytes(dump_rows(build_usage_row(make_ctx(i)) for i in range(10)))
    store = FakeStore(fail_calls={2, 3})
    writer = writer_for(store, tmp_path, batch_size=3)
    writer.start()
    await wait_until(lambda: len(store.rows) == 10)
    await writer.aclose()
    assert store.request_ids == [f"req-{i}" for i in range(10)]


async def test_a_replay_interrupted_by_a_restart_resumes_at_the_saved_offset(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.write_bytes(dump_rows(build_usage_row(make_ctx(i)) for i in range(10)))
    first_store = FakeStore(fail_calls=set(range(2, 1000)))  # one batch goes in, then the DB is gone
    first = writer_for(first_store, tmp_path, batch_size=3)
    first.start()
    await wait_until(lambda: first_store.calls >= 2)
    first.record(make_ctx(50))
    await first.aclose(timeout=2.0)
    assert first_store.request_ids == ["req-0", "req-1", "req-2"]

    second_store = FakeStore()
    second = writer_for(second_store, tmp_path, batch_size=3)
    second.start()
    await wait_until(lambda: len(second_store.rows) == 8)
    await second.aclose()
    written = first_store.request_ids + second_store.request_ids
    assert sorted(written) == sorted([f"req-{i}" for i in range(10)] + ["req-50"])
    assert len(written) == len(set(written))


async def test_a_line_cut_short_by_a_crash_is_skipped_and_counted(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    spill.write_bytes(dump_rows([build_usage_row(make_ctx(1)), build_usage_row(make_ctx(2))]) + b'{"ts": "20')
    store = FakeStore()
    writer = writer_for(store, tmp_path)
    writer.start()
    await wait_until(lambda: len(store.rows) == 2)
    await writer.aclose()
    assert writer.corrupt_lines_total == 1
    assert not spill.exists()


async def test_an_insert_hanging_past_the_close_timeout_is_spilled_not_lost(tmp_path: Path) -> None:
    release = threading.Event()

    def hanging_insert(rows: list[dict[str, Any]]) -> None:
        release.wait(5)
        raise ConnectionError("timed out")

    writer = UsageWriter(hanging_insert, spill_path=tmp_path / "spill.jsonl", batch_size=2, flush_interval_s=0.01)
    writer.start()
    for i in range(5):
        writer.record(make_ctx(i))
    await asyncio.sleep(0.05)
    await writer.aclose(timeout=0.1)
    release.set()
    assert sorted(spilled_ids(tmp_path / "spill.jsonl")) == [f"req-{i}" for i in range(5)]
    assert writer.dropped_total == 0


async def test_a_spilled_batch_the_database_keeps_refusing_is_set_aside(tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    old_rows = [{**build_usage_row(make_ctx(i)), "old_column": 1} for i in range(2)]
    spill.write_bytes(dump_rows(old_rows))
    store = FakeStore()
    refused: list[int] = []

    def insert(rows: list[dict[str, Any]]) -> None:
        if any("old_column" in row for row in rows):
            refused.append(len(rows))
            raise ValueError("unknown usage column 'old_column'")
        store.insert(rows)

    writer = UsageWriter(insert, spill_path=spill, batch_size=5, backoff_base_s=0.01, backoff_max_s=0.01)
    writer.start()
    for i in range(100, 200):
        writer.record(make_ctx(i))
        await asyncio.sleep(0.02)
        if writer.rejected_total:
            break
    await writer.aclose()
    assert writer.rejected_total == 2 and len(refused) >= 3  # strikes count only while new rows go in
    assert spilled_ids(writer.rejected_path) == ["req-0", "req-1"]
    assert not spill.exists() and not writer.replay_path.exists()
    assert store.request_ids == [f"req-{i}" for i in range(100, 100 + len(store.request_ids))]
    assert writer.dropped_total == 0 and writer.queue_depth == 0


async def test_a_row_recorded_after_close_goes_to_the_spill_file(tmp_path: Path) -> None:
    store = FakeStore()
    writer = writer_for(store, tmp_path)
    writer.start()
    await writer.aclose()
    writer.record(make_ctx(9))
    assert spilled_ids(tmp_path / "spill.jsonl") == ["req-9"]
    assert writer.queue_depth == 0


def test_caller_chosen_strings_are_clipped_to_their_columns() -> None:
    row = build_usage_row(make_ctx(1, model="m" * 5000, request_id="r" * 300, prompt_name="p" * 201))
    assert len(row["model"]) == len(row["request_id"]) == len(row["prompt_name"]) == 200


async def test_from_settings_reads_the_gateway_settings(tmp_path: Path) -> None:
    from llmgate.config import GatewaySettings

    settings = GatewaySettings(
        usage_spill_path=str(tmp_path / "s.jsonl"), usage_batch_size=7, usage_buffer_max=70, usage_flush_interval_s=2
    )
    writer = UsageWriter.from_settings(FakeStore().insert, settings)
    assert (writer.batch_size, writer.buffer_max, writer.flush_interval_s) == (7, 70, 2)
    assert writer.spill_path == tmp_path / "s.jsonl"


# --- fan-out -------------------------------------------------------------------------


def test_usage_sinks_isolate_a_failing_sink() -> None:
    seen: list[str] = []

    class Broken:
        def record(self, ctx: RequestContext) -> None:
            raise RuntimeError("boom")

    class Collecting:
        def record(self, ctx: RequestContext) -> None:
            seen.append(ctx.request_id)

    UsageSinks(Broken(), None, Collecting()).record(make_ctx(3))
    assert seen == ["req-3"]


@pytest.mark.parametrize("count", [1, 250])
def test_dump_rows_writes_one_line_per_row(count: int) -> None:
    data = dump_rows(build_usage_row(make_ctx(i)) for i in range(count))
    assert data.count(b"\n") == count


# --- against the real store (SQLite, and PostgreSQL when LLMGATE_TEST_PG_URL is set) ----------


@pytest.fixture(params=["sqlite", "postgresql"])
def real_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    from llmgate.storage.store import create_store

    if request.param == "sqlite":
        store = create_store(f"sqlite:///{tmp_path / 'usage.db'}")
        store.upgrade()
        yield store
        store.close()
        return
    pg_url = os.environ.get("LLMGATE_TEST_PG_URL")
    if not pg_url:
        pytest.skip("LLMGATE_TEST_PG_URL is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"lg_usage_{secrets.token_hex(6)}"
    admin = psycopg.connect(make_url(pg_url).set(drivername="postgresql").render_as_string(False), autocommit=True)
    admin.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    store = create_store(url.render_as_string(hide_password=False))
    try:
        store.upgrade()
        yield store
    finally:
        store.close()
        admin.execute(psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema)))
        admin.close()


def unreachable_store(kind: str, tmp_path: Path) -> Any:
    """A Store whose database cannot be reached: the driver's own connection error on each insert."""
    from llmgate.storage.store import create_store

    if kind == "sqlite":
        return create_store(f"sqlite:///{tmp_path / 'no-such-dir' / 'usage.db'}")
    return create_store("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=1")


async def test_a_real_outage_then_recovery_loses_nothing_and_the_report_is_exact(
    real_store: Any, tmp_path: Path
) -> None:
    kind = real_store.dialect
    dead = unreachable_store("sqlite" if kind == "sqlite" else "postgresql", tmp_path)
    target = {"store": dead}

    def insert(rows: list[dict[str, Any]]) -> None:
        target["store"].insert_usage(rows)

    spill = tmp_path / "spill.jsonl"
    first = UsageWriter(insert, spill_path=spill, batch_size=4, buffer_max=6, backoff_base_s=0.01, backoff_max_s=0.05)
    first.start()
    for i in range(15):
        first.record(make_ctx(i))
    await wait_until(lambda: first.insert_errors_total >= 2)
    await first.aclose(timeout=5.0)  # a clean stop while the database is down: everything spilled
    assert first.written_total == 0 and first.dropped_total == 0 and first.spilled_total == 15

    target["store"] = real_store  # the database is back; a new process starts
    second = UsageWriter(insert, spill_path=spill, batch_size=4)
    second.start()
    for i in range(15, 20):
        second.record(make_ctx(i))
    await second.aclose()
    dead.close()

    [report] = real_store.cost_report([], None, None)
    assert report["requests"] == 20
    assert report["cost_nusd"] == sum(1000 + i for i in range(20))
    assert report["input_tokens"] == sum(100 + i for i in range(20))
    assert not spill.exists() and not second.replay_path.exists()


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_batches_are_inserted_by_one_thread_below_the_loops_priority(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    store = FakeStore()

    def insert(rows: list[dict[str, Any]]) -> None:
        seen.append((threading.get_ident(), _own_nice()))
        store.insert(rows)

    loop_nice = _own_nice()
    writer = UsageWriter(insert, spill_path=tmp_path / "spill.jsonl", batch_size=2, flush_interval_s=10.0)
    writer.start()
    for i in range(6):
        writer.record(make_ctx(i))
    await wait_until(lambda: len(store.rows) == 6)
    await writer.aclose()
    assert len({thread for thread, _ in seen}) == 1
    assert {nice for _, nice in seen} == {min(19, loop_nice + INSERT_THREAD_NICE)}
    assert _own_nice() == loop_nice  # the event loop's thread is untouched


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_lowering_a_threads_priority_caps_at_19_and_leaves_others_alone() -> None:
    results: dict[str, int] = {}

    def run(name: str, increment: int) -> None:
        lower_thread_priority(increment)
        results[name] = _own_nice()

    base = _own_nice()
    for name, increment in (("ten", 10), ("huge", 100)):
        thread = threading.Thread(target=run, args=(name, increment))
        thread.start()
        thread.join()
    assert results == {"ten": min(19, base + 10), "huge": 19}
    assert _own_nice() == base
