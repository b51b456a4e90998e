"""Metrics: the exposition parses with prometheus_client's parser and moves as calls settle."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmgate.errors import UpstreamRateLimited
from llmgate.metrics import CONTENT_TYPE, Metrics
from llmgate.types import KeyInfo, RequestContext, Usage
from llmgate.usage import UsageWriter

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def make_ctx(model: str = "gpt-4o-mini", **overrides: Any) -> RequestContext:
    ctx = RequestContext(request_id="r1", surface="chat", token="sk-lg-callersecret", body={}, model=model)
    ctx.key = KeyInfo(id="key-1", name="alice", team="research")
    ctx.deployment = SimpleNamespace(label="openai/gpt-4o-mini", provider=SimpleNamespace(name="openai"))
    ctx.usage = Usage(input_tokens=120, cached_input_tokens=20, output_tokens=30, reasoning_tokens=4)
    ctx.cost_nusd = 2_500_000  # 0.0025 USD
    ctx.attempts = 1
    ctx.started = 100.0
    ctx.upstream_latency = 0.2
    for name, v in overrides.items():
        setattr(ctx, name, v)
    return ctx


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(known_models={"gpt-4o-mini", "claude"}, process_metrics=False)


def test_requests_tokens_and_cost_move_with_each_call(metrics: Metrics) -> None:
    before = scrape(metrics)
    assert value(before, "llmgate_requests_total", surface="chat", model="gpt-4o-mini", status="200") == 0
    metrics.observe(make_ctx(), now=100.25)
    metrics.observe(make_ctx(), now=100.25)
    after = scrape(metrics)
    assert value(after, "llmgate_requests_total", surface="chat", model="gpt-4o-mini", status="200") == 2
    assert value(after, "llmgate_tokens_total", model="gpt-4o-mini", kind="input") == 240
    assert value(after, "llmgate_tokens_total", model="gpt-4o-mini", kind="cached_input") == 40
    assert value(after, "llmgate_tokens_total", model="gpt-4o-mini", kind="output") == 60
    assert value(after, "llmgate_tokens_total", model="gpt-4o-mini", kind="reasoning") == 8
    assert value(after, "llmgate_cost_usd_total", model="gpt-4o-mini") == pytest.approx(0.005)


def test_failed_calls_are_counted_by_status(metrics: Metrics) -> None:
    ctx = make_ctx(status=429, usage=None, cost_nusd=0, error=UpstreamRateLimited("slow down"))
    metrics.observe(ctx, now=101.0)
    samples = scrape(metrics)
    assert value(samples, "llmgate_requests_total", surface="chat", model="gpt-4o-mini", status="429") == 1
    assert value(samples, "llmgate_cost_usd_total", model="gpt-4o-mini") == 0


def test_gateway_added_and_upstream_latency_are_separate_histograms(metrics: Metrics) -> None:
    metrics.observe(make_ctx(upstream_latency=0.2), now=100.203)  # 3 ms of our own
    samples = scrape(metrics)
    assert value(samples, "llmgate_gateway_added_latency_seconds_count") == 1
    assert value(samples, "llmgate_gateway_added_latency_seconds_sum") == pytest.approx(0.003)
    assert value(samples, "llmgate_gateway_added_latency_seconds_bucket", le="0.0025") == 0
    assert value(samples, "llmgate_gateway_added_latency_seconds_bucket", le="0.005") == 1
    assert value(samples, "llmgate_gateway_added_latency_seconds_bucket", le="+Inf") == 1
    assert value(samples, "llmgate_upstream_latency_seconds_count", provider="openai") == 1
    assert value(samples, "llmgate_upstream_latency_seconds_sum", provider="openai") == pytest.approx(0.2)
    assert value(samples, "llmgate_upstream_latency_seconds_bucket", provider="openai", le="0.1") == 0
    assert value(samples, "llmgate_upstream_latency_seconds_bucket", provider="openai", le="0.25") == 1


def test_a_call_that_never_reached_upstream_is_all_gateway_time(metrics: Metrics) -> None:
    metrics.observe(make_ctx(deployment=None, upstream_latency=0.0, usage=None, status=401), now=100.01)
    samples = scrape(metrics)
    assert value(samples, "llmgate_gateway_added_latency_seconds_sum") == pytest.approx(0.01)
    assert not any(name == "llmgate_upstream_latency_seconds_count" for name, _ in samples)


def test_time_to_first_token_only_for_streams(metrics: Metrics) -> None:
    metrics.observe(make_ctx(), now=101.0)
    metrics.observe(make_ctx(stream=True, first_token_at=100.4), now=101.0)
    samples = scrape(metrics)
    assert value(samples, "llmgate_time_to_first_token_seconds_count", model="gpt-4o-mini") == 1
    assert value(samples, "llmgate_time_to_first_token_seconds_sum", model="gpt-4o-mini") == pytest.approx(0.4)


def test_retries_are_attempts_beyond_the_first(metrics: Metrics) -> None:
    metrics.observe(make_ctx(attempts=3), now=101.0)
    metrics.observe(make_ctx(attempts=1), now=101.0)
    assert value(scrape(metrics), "llmgate_upstream_retries_total", model="gpt-4o-mini") == 2


def test_unknown_models_share_one_label(metrics: Metrics) -> None:
    for i in range(50):
        metrics.observe(make_ctx(model=f"made-up-{i}", status=404, deployment=None, usage=None), now=101.0)
    samples = scrape(metrics)
    assert value(samples, "llmgate_requests_total", surface="chat", model="other", status="404") == 50
    assert not any(dict(labels).get("model", "").startswith("made-up") for _, labels in samples)


def test_the_number_of_model_labels_is_capped() -> None:
    metrics = Metrics(max_models=3, process_metrics=False)
    for i in range(10):
        metrics.observe(make_ctx(model=f"m{i}"), now=101.0)
    models = {dict(labels)["model"] for name, labels in scrape(metrics) if name == "llmgate_requests_total"}
    assert models == {"m0", "m1", "m2", "other"}


def test_no_metric_is_labelled_by_key(metrics: Metrics) -> None:
    metrics.observe(make_ctx(), now=101.0)
    metrics.throttle_decision("key", "rpm")
    text = metrics.render().decode()
    assert "key-1" not in text and "alice" not in text and "callersecret" not in text
    for _, labels in scrape(metrics):
        assert not {"key", "key_id", "key_name"} & {name for name, _ in labels}


def test_event_counters(metrics: Metrics) -> None:
    metrics.throttle_decision("key", "rpm")
    metrics.throttle_decision("key", "rpm")
    metrics.throttle_decision("team", "budget")
    metrics.upstream_error("openai", "rate_limit_exceeded")
    metrics.upstream_error("anthropic", None)
    metrics.cooldown("openai/gpt-4o-mini")
    samples = scrape(metrics)
    assert value(samples, "llmgate_throttle_decisions_total", scope="key", reason="rpm") == 2
    assert value(samples, "llmgate_throttle_decisions_total", scope="team", reason="budget") == 1
    assert value(samples, "llmgate_upstream_errors_total", provider="openai", code="rate_limit_exceeded") == 1
    assert value(samples, "llmgate_upstream_errors_total", provider="anthropic", code="unknown") == 1
    assert value(samples, "llmgate_deployment_cooldowns_total", deployment="openai/gpt-4o-mini") == 1


async def test_usage_writer_figures_are_read_at_scrape_time(metrics: Metrics, tmp_path: Path) -> None:
    def down(rows: list[dict[str, Any]]) -> None:
        raise ConnectionError("db down")

    writer = UsageWriter(down, spill_path=tmp_path / "spill.jsonl", batch_size=2, buffer_max=3)
    metrics.bind_usage_writer(writer)
    assert value(scrape(metrics), "llmgate_usage_queue_depth") == 0
    for _ in range(3):
        writer.record(make_ctx())
    samples = scrape(metrics)
    assert value(samples, "llmgate_usage_queue_depth") == 3
    writer.record(make_ctx())  # over the bound: the oldest batch is spilled
    samples = scrape(metrics)
    assert value(samples, "llmgate_usage_records_spilled_total") == 2
    assert value(samples, "llmgate_usage_queue_depth") == 2
    assert value(samples, "llmgate_usage_records_dropped_total") == 0


def test_limiter_stats_are_read_at_scrape_time(metrics: Metrics) -> None:
    from llmgate.throttle.limiter import new_stats

    stats = new_stats()
    metrics.bind_limiter_stats(stats)
    assert value(scrape(metrics), "llmgate_limiter_store_errors_total") == 0
    stats["store_errors"] += 2
    stats["throttled"] += 5
    samples = scrape(metrics)
    assert value(samples, "llmgate_limiter_store_errors_total") == 2
    assert value(samples, "llmgate_limiter_outcomes_total", outcome="throttled") == 5
    assert value(samples, "llmgate_limiter_outcomes_total", outcome="admitted") == 0


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(process_metrics=False), Metrics(process_metrics=False)
    first.observe(make_ctx(), now=101.0)
    assert value(scrape(first), "llmgate_requests_total", surface="chat", model="gpt-4o-mini", status="200") == 1
    assert value(scrape(second), "llmgate_requests_total", surface="chat", model="gpt-4o-mini", status="200") == 0


def test_process_metrics_are_included_by_default() -> None:
    assert "process_cpu_seconds_total" in Metrics().render().decode()


async def call_asgi(metrics: Metrics, method: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await metrics.asgi({"type": "http", "method": method, "path": "/metrics", "headers": []}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


async def test_the_asgi_endpoint_serves_the_text_format(metrics: Metrics) -> None:
    metrics.observe(make_ctx(), now=101.0)
    status, headers, body = await call_asgi(metrics, "GET")
    assert status == 200
    assert headers[b"content-type"] == CONTENT_TYPE.encode()
    assert int(headers[b"content-length"]) == len(body)
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"llmgate_requests", "llmgate_gateway_added_latency_seconds", "llmgate_tokens"} <= names


async def test_the_asgi_endpoint_refuses_other_methods(metrics: Metrics) -> None:
    status, headers, _ = await call_asgi(metrics, "POST")
    assert status == 405 and headers[b"allow"] == b"GET, HEAD"
    status, _, body = await call_asgi(metrics, "HEAD")
    assert status == 200 and body == b""


def test_observe_is_cheap(metrics: Metrics) -> None:
    ctx = make_ctx(stream=True, first_token_at=100.1, attempts=2)
    metrics.observe(ctx)
    n = 5_000
    start = time.perf_counter()
    for _ in range(n):
        metrics.observe(ctx)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 50e-6  # typically ~5 µs; the bound leaves room for a loaded CI machine
