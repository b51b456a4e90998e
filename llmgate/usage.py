"""Usage records: one row per settled call, written in batches off the hot path.

`UsageWriter.record` (the pipeline's UsageSink) turns the context into a row and
appends it to an in-memory deque: no await, no I/O in the normal case. A
background task hands batches to the store's synchronous `insert` in a worker
thread. When the database is down the rows stay in the buffer and are retried
with backoff; past `buffer_max` the oldest rows are spilled to a JSON-lines
file, so nothing is dropped. When inserts work again the spill file is replayed
first, then the buffer.

Spill file protocol (all renames happen on the event loop thread, so they never
race the appends, which happen there too):
- overflow and shutdown append to `spill_path`;
- a replay starts by renaming `spill_path` to `<spill_path>.replay`, reads it in
  batches and, after each inserted batch, records the byte offset reached in
  `<spill_path>.replay.offset` (written atomically). A replay that fails half way
  (or a process that dies) resumes from that offset, so a row is neither lost
  nor written twice (except the one batch a hard crash may catch between its
  commit and the offset update). Both files are removed once the replay is done;
- a spilled batch the database keeps refusing while it accepts new rows (rows
  from an older schema, say) is moved to `<spill_path>.rejected` for an operator,
  so it cannot block usage recording forever.
After `aclose`, a late `record` goes straight to the spill file.

What a hard crash (`kill -9`, an OOM kill) loses: the rows still in memory —
the batch being inserted (the rows of about one `flush_interval_s`; the flusher
drains every interval, or sooner at `batch_size` rows) and those settled while
that insert runs: about `rate x (flush_interval_s + two inserts' time)` rows,
under a second of traffic at the defaults (tests/reliability/test_process_faults.py
measures it). Spilled rows are in the file and survive a process crash (not
fsynced: an OS crash may lose the last ones). SIGTERM loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from llmgate.types import RequestContext

log = logging.getLogger("llmgate.usage")

UsageRow = dict[str, Any]
InsertRows = Callable[[list[UsageRow]], None]

USAGE_COLUMNS = (
    "ts",
    "request_id",
    "key_id",
    "key_name",
    "team",
    "surface",
    "model",
    "deployment",
    "provider",
    "status",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_nusd",
    "latency_ms",
    "ttft_ms",
    "estimated",
    "prompt_name",
    "prompt_version",
    "error_code",
)


# Caller-chosen strings are clipped to their column's size: one over-long model name
# must not make PostgreSQL refuse a whole batch, again and again.
_MAX_ID = 200


def _clip(value: str | None, size: int = _MAX_ID) -> str | None:
    return value[:size] if value is not None and len(value) > size else value


def build_usage_row(ctx: RequestContext, now: float | None = None) -> UsageRow:
    """The `usage` table row for a settled call. `now` is a perf_counter reading (default: now)."""
    end = time.perf_counter() if now is None else now
    key = ctx.key
    dep = ctx.deployment
    usage = ctx.usage
    error = ctx.error
    return {
        "ts": datetime.fromtimestamp(ctx.started_wall, tz=UTC),
        "request_id": _clip(ctx.request_id),
        "key_id": key.id if key is not None else None,
        "key_name": key.name if key is not None else None,
        "team": key.team if key is not None else None,
        "surface": ctx.surface,
        "model": _clip(ctx.model),
        "deployment": dep.label if dep is not None else None,
        "provider": dep.provider.name if dep is not None else None,
        "status": ctx.status,
        "input_tokens": usage.input_tokens if usage is not None else 0,
        "cached_input_tokens": usage.cached_input_tokens if usage is not None else 0,
        "cache_write_tokens": usage.cache_write_tokens if usage is not None else 0,
        "output_tokens": usage.output_tokens if usage is not None else 0,
        "reasoning_tokens": usage.reasoning_tokens if usage is not None else 0,
        "cost_nusd": int(ctx.cost_nusd),
        "latency_ms": round((end - ctx.started) * 1000, 3),
        "ttft_ms": round((ctx.first_token_at - ctx.started) * 1000, 3) if ctx.first_token_at else None,
        "estimated": bool(usage.estimated) if usage is not None else False,
        "prompt_name": _clip(ctx.prompt_name),
        "prompt_version": ctx.prompt_version,
        "error_code": (error.code or str(error.status)) if error is not None else None,
    }


def dump_rows(rows: Iterable[UsageRow]) -> bytes:
    """Rows as JSON lines (datetimes in ISO 8601)."""
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def parse_row_line(line: bytes) -> UsageRow:
    """One spilled JSON line back to a row (`ts` as an aware datetime)."""
    row = orjson.loads(line)
    row["ts"] = datetime.fromisoformat(row["ts"])
    return row


def read_spill_batch(path: Path, offset: int, limit: int) -> tuple[list[UsageRow], int, int]:
    """Up to `limit` rows of `path` from byte `offset`: (rows, next offset, unreadable lines skipped).

    A line cut short by a crash mid-append cannot be parsed; it is skipped and counted.
    """
    rows: list[UsageRow] = []
    skipped = 0
    with path.open("rb") as f:
        f.seek(offset)
        while len(rows) < limit:
            line = f.readline()
            if not line:
                break
            offset += len(line)
            if not line.strip():
                continue
            try:
                rows.append(parse_row_line(line))
            except (ValueError, KeyError, TypeError):
                skipped += 1
        return rows, offset, skipped


def append_rows(path: Path, rows: Sequence[UsageRow]) -> None:
    with path.open("ab") as f:
        f.write(dump_rows(rows))


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# How much lower than the event loop's the inserting thread's scheduling priority is (a nice
# increment; Linux only, where a thread has its own nice value).
INSERT_THREAD_NICE = 10


def lower_thread_priority(increment: int = INSERT_THREAD_NICE) -> None:
    """Give the calling thread a lower CPU priority than the event loop's thread.

    With the gateway on one core, a batch insert (milliseconds of the driver's work, most
    of it outside the GIL) otherwise shares the core evenly with the event loop, and the
    requests answered meanwhile wait their turn: measured as the p99 latency at one
    connection. Niced, the inserting thread yields the core whenever the loop has work,
    and still gets the core's idle time and a share under saturation.
    """
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))


class UsageWriter:
    """Batches usage rows into the store; buffers, spills and replays when it is down."""

    def __init__(
        self,
        insert: InsertRows,
        *,
        spill_path: str | Path,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        buffer_max: int = 100_000,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._insert = insert
        # One thread for the store's synchronous work, below the event loop's priority (made on first use).
        self._thread: ThreadPoolExecutor | None = None
        self.spill_path = Path(spill_path)
        self.replay_path = self.spill_path.with_name(self.spill_path.name + ".replay")
        self.offset_path = self.spill_path.with_name(self.spill_path.name + ".replay.offset")
        self.rejected_path = self.spill_path.with_name(self.spill_path.name + ".rejected")
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.buffer_max = max(buffer_max, 1)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._buffer: deque[UsageRow] = deque()
        self._inflight: list[UsageRow] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._closed = False
        # A spilled batch the database refuses while it takes new rows: (rows, offset after them), strikes.
        self._refused: tuple[list[UsageRow], int] | None = None
        self._refused_strikes = 0
        # Overflow spills when the buffer grows past this depth; raised after a failed spill
        # so a broken disk is not retried on every record.
        self._spill_threshold = self.buffer_max
        self.written_total = 0
        self.spilled_total = 0
        self.replayed_total = 0
        self.dropped_total = 0
        self.corrupt_lines_total = 0
        self.rejected_total = 0
        self.insert_errors_total = 0

    @classmethod
    def from_settings(cls, insert: InsertRows, gateway: Any) -> UsageWriter:
        """Built from `settings.gateway` (GatewaySettings)."""
        return cls(
            insert,
            spill_path=gateway.usage_spill_path,
            batch_size=gateway.usage_batch_size,
            flush_interval_s=gateway.usage_flush_interval_s,
            buffer_max=gateway.usage_buffer_max,
        )

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, "llmgate-usage", initializer=lower_thread_priority)
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @property
    def queue_depth(self) -> int:
        """Rows waiting in memory (buffered and in flight)."""
        return len(self._buffer) + len(self._inflight)

    # --- the hot path -----------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        """Queue the call's row; never blocks on the database, never raises."""
        try:
            row = build_usage_row(ctx)
        except Exception:
            self.dropped_total += 1
            log.exception("usage record dropped: cannot build a row for request %s", ctx.request_id)
            return
        self.add_row(row)

    def add_row(self, row: UsageRow) -> None:
        if self._closed:  # a call settled after shutdown: straight to the file, replayed at next start
            self._buffer.append(row)
            self._spill_remaining()
            return
        buffer = self._buffer
        buffer.append(row)
        depth = len(buffer)
        if depth >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        if depth > self._spill_threshold:
            self._spill_overflow()

    def _spill_overflow(self) -> None:
        """Move the oldest rows to the spill file (a batch at a time, so the file is touched rarely)."""
        count = min(len(self._buffer), max(len(self._buffer) - self.buffer_max, self.batch_size))
        rows = [self._buffer.popleft() for _ in range(count)]
        try:
            append_rows(self.spill_path, rows)
        except OSError:
            # Memory over losing records: keep them and say so.
            self._buffer.extendleft(reversed(rows))
            self._spill_threshold = len(self._buffer) + self.batch_size
            log.exception("usage spill to %s failed; keeping %d rows in memory", self.spill_path, len(self._buffer))
            return
        self._spill_threshold = self.buffer_max
        self.spilled_total += count
        log.warning("usage buffer full: spilled %d rows to %s", count, self.spill_path)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the background flusher (it first replays a spill file left by a previous run)."""
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="llmgate-usage-writer")

    async def aclose(self, timeout: float = 10.0) -> None:
        """Flush everything; what cannot be written within `timeout` is spilled to the file.
        Rows recorded after this go straight to the spill file."""
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain(), timeout)
        self._closed = True
        self._spill_remaining()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)

    def _spill_remaining(self) -> None:
        rows = [*self._inflight, *self._buffer]
        self._inflight = []
        self._buffer.clear()
        if not rows:
            return
        try:
            append_rows(self.spill_path, rows)
        except OSError:
            self.dropped_total += len(rows)
            log.exception("usage: %d rows could not be written nor spilled to %s", len(rows), self.spill_path)
            return
        self.spilled_total += len(rows)
        log.warning("usage: %d rows spilled to %s at shutdown; replayed at next start", len(rows), self.spill_path)

    async def _run(self) -> None:
        drained = await self._guarded_drain()
        while not self._stop.is_set():
            delay = self.flush_interval_s if drained else self._backoff()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_or_stop(drained), delay)
            self._wake.clear()
            drained = await self._guarded_drain()
        if drained and self._buffer:  # rows recorded during the last drain
            await self._guarded_drain()

    async def _guarded_drain(self) -> bool:
        """The flusher must outlive any surprise: log it and back off like a failed insert."""
        try:
            return await self._drain()
        except Exception:
            self._failures += 1
            log.exception("usage writer: unexpected error while writing; retrying")
            return False

    async def _wake_or_stop(self, drained: bool) -> None:
        # While backing off after a failure only a stop cuts the wait short.
        await (self._wake.wait() if drained else self._stop.wait())

    def _backoff(self) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(self._failures - 1, 16))
        return delay * random.uniform(0.5, 1.0)

    # --- writing ----------------------------------------------------------------------

    async def _drain(self) -> bool:
        """Replay the spill files, then write the buffer. False when anything is left to retry.

        A failing replay does not hold the buffer back: if the database takes the
        buffer's rows but keeps refusing one spilled batch (say, rows from an older
        schema), that batch is set aside in the `.rejected` file after three tries.
        """
        replayed = await self._replay_spills()
        written_before = self.written_total
        buffered = await self._write_buffer()
        if not replayed and self._refused is not None and self.written_total > written_before:
            self._refused_strikes += 1
            if self._refused_strikes >= 3:
                self._reject_refused_batch()
        return replayed and buffered

    async def _replay_spills(self) -> bool:
        while self._has_spill():  # a replay may leave a newer spill file behind it
            try:
                if not await self._replay():
                    return False
            except OSError:
                self._failures += 1
                log.exception("usage replay of %s failed; retrying", self.spill_path)
                return False
        return True

    def _reject_refused_batch(self) -> None:
        assert self._refused is not None
        rows, next_offset = self._refused
        append_rows(self.rejected_path, rows)
        write_atomically(self.offset_path, str(next_offset).encode())
        self.rejected_total += len(rows)
        self._refused = None
        self._refused_strikes = 0
        log.error(
            "usage: the database keeps refusing %d spilled rows it cannot take; set aside in %s",
            len(rows),
            self.rejected_path,
        )

    async def _write_buffer(self) -> bool:
        while self._buffer:
            count = min(self.batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            self._inflight = batch
            try:
                await self._in_thread(self._insert, batch)
            except Exception:
                self._inflight = []
                self._buffer.extendleft(reversed(batch))
                self._insert_failed(len(batch))
                return False
            self._inflight = []
            self.written_total += count
            self._failures = 0
        return True

    def _insert_failed(self, count: int) -> None:
        self._failures += 1
        self.insert_errors_total += 1
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning(
                "usage insert failed (%d in a row); %d rows buffered, retrying",
                self._failures,
                len(self._buffer),
                exc_info=True,
            )

    def _has_spill(self) -> bool:
        return self.replay_path.exists() or self.spill_path.exists()

    async def _replay(self) -> bool:
        """Insert the spilled rows in batches, oldest first; resumable at the saved offset."""
        if not self.replay_path.exists():
            os.replace(self.spill_path, self.replay_path)
            write_atomically(self.offset_path, b"0")
        offset = self._saved_offset()
        while True:
            rows, next_offset, skipped = await self._in_thread(
                read_spill_batch, self.replay_path, offset, self.batch_size
            )
            if skipped:
                self.corrupt_lines_total += skipped
                log.error("usage replay: %d unreadable lines in %s skipped", skipped, self.replay_path)
            if not rows and next_offset == offset:
                break
            if rows:
                # Not `_inflight`: these rows stay in the replay file until the offset moves past them.
                try:
                    await self._in_thread(self._insert, rows)
                except Exception:
                    self._refused = (rows, next_offset)
                    self._insert_failed(len(rows))
                    return False
                self._refused = None
                self._refused_strikes = 0
                self.written_total += len(rows)
                self.replayed_total += len(rows)
                self._failures = 0
            offset = next_offset
            await self._in_thread(write_atomically, self.offset_path, str(offset).encode())
        self.replay_path.unlink(missing_ok=True)
        self.offset_path.unlink(missing_ok=True)
        log.info("usage replay of %s done", self.spill_path)
        return True

    def _saved_offset(self) -> int:
        try:
            return int(self.offset_path.read_bytes().strip() or b"0")
        except (OSError, ValueError):
            return 0


class UsageSinks:
    """Several UsageSinks behind one: the writer, metrics, the request log.

    The pipeline calls `gw.usage.record(ctx)` once per settled call; each sink is
    isolated so one failing never stops the others (nor reaches the caller).
    """

    def __init__(self, *sinks: Any) -> None:
        self.sinks = tuple(s for s in sinks if s is not None)

    def record(self, ctx: RequestContext) -> None:
        for sink in self.sinks:
            try:
                sink.record(ctx)
            except Exception:
                log.exception("usage sink %s failed for request %s", type(sink).__name__, ctx.request_id)
