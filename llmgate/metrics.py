"""Prometheus metrics: what the gateway counts, and the `GET /metrics` endpoint.

One `Metrics` owns its own CollectorRegistry (never the process-global one), so
tests and several apps in one process do not collide. `observe(ctx)` runs once
per settled call; labelled children are looked up in plain dicts instead of
calling `.labels()` each time, which keeps it to a few microseconds.

Labels are bounded on purpose: by surface, model group, status, provider,
deployment — never by key (per-key figures live in the usage reports). Model
names come from callers, so names outside `known_models` (or past
`max_models`) are counted as "other".

Latency split: `upstream_latency_seconds` is the provider's time for the
attempt that answered (for a stream, until its end); `gateway_added_latency_seconds`
is the rest of the call's wall time — authentication, admission (including any
wait for capacity), routing, earlier failed attempts, translation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.process_collector import ProcessCollector

from llmgate.types import RequestContext

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
OTHER = "other"

GATEWAY_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_TOKEN_KINDS = ("input", "cached_input", "output", "reasoning")
_NANO = 1e-9

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class _Children:
    """A labelled metric's children, cached by label values."""

    __slots__ = ("cache", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.cache: dict[tuple[Any, ...], Any] = {}

    def get(self, *labels: Any) -> Any:
        child = self.cache.get(labels)
        if child is None:
            child = self.cache[labels] = self.metric.labels(*(str(v) for v in labels))
        return child


class UsageWriterCollector:
    """Reads the usage writer's live figures at scrape time."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        w = self.writer
        yield GaugeMetricFamily("llmgate_usage_queue_depth", "Usage rows waiting in memory.", value=w.queue_depth)
        yield CounterMetricFamily(
            "llmgate_usage_records_written", "Usage rows written to the database.", value=w.written_total
        )
        yield CounterMetricFamily(
            "llmgate_usage_records_spilled", "Usage rows spilled to the local file.", value=w.spilled_total
        )
        yield CounterMetricFamily(
            "llmgate_usage_records_dropped", "Usage rows lost (neither written nor spilled).", value=w.dropped_total
        )

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class Metrics:
    """The gateway's counters and histograms, in a registry of their own."""

    def __init__(
        self, known_models: Iterable[str] | None = None, max_models: int = 500, process_metrics: bool = True
    ) -> None:
        self.registry = CollectorRegistry()
        self.known_models = frozenset(known_models) if known_models is not None else None
        self.max_models = max_models
        self._model_labels: dict[str, str] = {}
        r = self.registry
        self.requests = _Children(
            Counter(
                "llmgate_requests", "Calls by surface, model and status.", ("surface", "model", "status"), registry=r
            )
        )
        self.gateway_added_latency = Histogram(
            "llmgate_gateway_added_latency_seconds",
            "Wall time of a call minus the upstream's time.",
            buckets=GATEWAY_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = _Children(
            Histogram(
                "llmgate_upstream_latency_seconds",
                "Upstream time of the attempt that answered (streams: until the end).",
                ("provider",),
                buckets=UPSTREAM_LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.ttft = _Children(
            Histogram(
                "llmgate_time_to_first_token_seconds",
                "From the request's arrival to the first streamed token.",
                ("model",),
                buckets=TTFT_BUCKETS,
                registry=r,
            )
        )
        self.tokens = _Children(Counter("llmgate_tokens", "Tokens by model and kind.", ("model", "kind"), registry=r))
        self.cost = _Children(Counter("llmgate_cost_usd", "Cost in USD by model.", ("model",), registry=r))
        self.throttle = _Children(
            Counter(
                "llmgate_throttle_decisions",
                "Throttle refusals and waits by scope and reason.",
                ("scope", "reason"),
                registry=r,
            )
        )
        self.upstream_errors = _Children(
            Counter("llmgate_upstream_errors", "Failed upstream attempts.", ("provider", "code"), registry=r)
        )
        self.retries = _Children(
            Counter("llmgate_upstream_retries", "Upstream attempts beyond the first.", ("model",), registry=r)
        )
        self.cooldowns = _Children(
            Counter("llmgate_deployment_cooldowns", "Deployments put in cooldown.", ("deployment",), registry=r)
        )
        self.limiter_store_errors = Counter(
            "llmgate_limiter_store_errors", "Limiter backend (Redis) failures.", registry=r
        )
        self._tokens_by_model: dict[str, tuple[Any, Any, Any, Any]] = {}
        if process_metrics:
            ProcessCollector(registry=r)

    # --- per call --------------------------------------------------------------------

    def observe(self, ctx: RequestContext, now: float | None = None) -> None:
        """Count one settled call. `now` is a perf_counter reading (default: now)."""
        end = time.perf_counter() if now is None else now
        model = self._model_label(ctx.model)
        self.requests.get(ctx.surface, model, ctx.status).inc()
        upstream = ctx.upstream_latency
        if upstream > 0 and ctx.deployment is not None:
            self.upstream_latency.get(ctx.deployment.provider.name).observe(upstream)
        self.gateway_added_latency.observe(max(0.0, end - ctx.started - upstream))
        if ctx.first_token_at:
            self.ttft.get(model).observe(ctx.first_token_at - ctx.started)
        usage = ctx.usage
        if usage is not None:
            inputs, cached, outputs, reasoning = self._token_children(model)
            if usage.input_tokens:
                inputs.inc(usage.input_tokens)
            if usage.cached_input_tokens:
                cached.inc(usage.cached_input_tokens)
            if usage.output_tokens:
                outputs.inc(usage.output_tokens)
            if usage.reasoning_tokens:
                reasoning.inc(usage.reasoning_tokens)
        if ctx.cost_nusd:
            self.cost.get(model).inc(ctx.cost_nusd * _NANO)
        if ctx.attempts > 1:
            self.retries.get(model).inc(ctx.attempts - 1)

    record = observe  # a Metrics is also a UsageSink (see llmgate.usage.UsageSinks)

    def _model_label(self, model: str) -> str:
        label = self._model_labels.get(model)
        if label is None:
            allowed = self.known_models is None or model in self.known_models
            label = model if allowed and model and len(self._model_labels) < self.max_models else OTHER
            if label != OTHER:
                self._model_labels[model] = label
        return label

    def _token_children(self, model: str) -> tuple[Any, Any, Any, Any]:
        children = self._tokens_by_model.get(model)
        if children is None:
            children = self._tokens_by_model[model] = tuple(self.tokens.get(model, k) for k in _TOKEN_KINDS)  # type: ignore[assignment]
        return children  # type: ignore[return-value]

    # --- events from other parts -----------------------------------------------------

    def throttle_decision(self, scope: str, reason: str) -> None:
        """A limit refused or delayed a call (scope: key/team/global/model/policy; reason: rpm/tpm/...)."""
        self.throttle.get(scope, reason).inc()

    def upstream_error(self, provider: str, code: str | int | None) -> None:
        """One failed upstream attempt (whether or not it was retried)."""
        self.upstream_errors.get(provider, code if code is not None else "unknown").inc()

    def cooldown(self, deployment: str) -> None:
        self.cooldowns.get(deployment).inc()

    def limiter_store_error(self) -> None:
        self.limiter_store_errors.inc()

    def bind_usage_writer(self, writer: Any) -> None:
        """Expose the usage writer's queue depth and written/spilled/dropped totals."""
        self.registry.register(UsageWriterCollector(writer))

    # --- exposition ------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    async def asgi(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        """`GET /metrics` as a raw ASGI app."""
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8", [(b"allow", b"GET, HEAD")])
            return
        await _respond(send, 200, self.render(), CONTENT_TYPE, head=scope["method"] == "HEAD")


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": b"" if head else body})
