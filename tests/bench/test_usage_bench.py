"""Usage records: building a settled call's row and queueing it (no database on this path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmgate.types import KeyInfo, RequestContext, Usage
from llmgate.usage import UsageWriter


def build_settled_ctx() -> RequestContext:
    ctx = RequestContext(request_id="r", surface="chat", token=None, body={}, model="m")
    ctx.key = KeyInfo(id="k1", name="bench", team="bench")
    ctx.usage = Usage(input_tokens=14, output_tokens=9)
    ctx.cost_nusd = 7500
    return ctx


def test_usage_record_enqueue(benchmark: Any, tmp_path: Path) -> None:
    rows: list[Any] = []
    writer = UsageWriter(rows.extend, spill_path=tmp_path / "spill.jsonl", batch_size=10**9, buffer_max=10**9)
    ctx = build_settled_ctx()
    benchmark(writer.record, ctx)
    assert writer.queue_depth >= 1
    assert writer.dropped_total == 0
    assert not rows  # queued only: the flusher (not started here) writes
