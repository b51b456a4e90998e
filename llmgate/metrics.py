"""Prometheus metrics: what the gateway counts, and the `GET /metrics` endpoint.

One `Metrics` owns its own CollectorRegistry (never the process-global one), so
tests and several apps in one process do not collide. `observe(ctx)` runs once
per settled call on the event loop, so the per-call figures are plain numbers
in dicts (`CallStats`), turned into metric families only when scraped — a few
microseconds per call. Rare events (throttle decisions, upstream errors,
cooldowns) are counted the same way (`EventCounter`), exported like
prometheus_client's own labelled counters.

prometheus_client itself (about 2 MB of modules) is imported on the first
scrape, when the registry is built: a gateway nobody scrapes never loads it.

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

import asyncio
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from llmgate.looplag import LAG_BUCKETS
from llmgate.types import RequestContext

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client's CONTENT_TYPE_PLAIN_0_0_4
OTHER = "other"

GATEWAY_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TOKEN_KINDS = ("input", "cached_input", "output", "reasoning")
_NANO = 1e-9

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


def _created_series() -> bool:
    """Whether counters export `_created` samples (prometheus_client's switch, set from
    PROMETHEUS_DISABLE_CREATED_SERIES or `disable_created_metrics()`)."""
    from prometheus_client import metrics

    return bool(getattr(metrics, "_use_created", True))


class EventCounter:
    """A labelled counter of rare events, exported as prometheus_client's `Counter` would be.

    Counts live in a dict keyed by the label values as strings, each with the time
    its series appeared (the `_created` sample); prometheus_client is needed only
    at scrape time.
    """

    __slots__ = ("_by_given", "counts", "documentation", "labelnames", "lock", "name")

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.counts: dict[tuple[str, ...], list[float]] = {}  # label values -> [count, created]
        self._by_given: dict[tuple[Any, ...], list[float]] = {}  # the same entries by the values as given
        self.lock = threading.Lock()  # thread-safe, as prometheus_client's Counter is

    def inc(self, *labels: Any) -> None:
        entry = self._by_given.get(labels)
        if entry is None:
            entry = self._series(labels)
        with self.lock:
            entry[0] += 1.0

    def _series(self, labels: tuple[Any, ...]) -> list[float]:
        key = tuple(str(v) for v in labels)
        with self.lock:
            entry = self.counts.get(key)
            if entry is None:
                entry = self.counts[key] = [0.0, time.time()]
            self._by_given[labels] = entry
        return entry

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        created = _created_series()
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self.lock:
            series = [(key, count, at) for key, (count, at) in self.counts.items()]
        for key, count, at in series:
            family.add_metric(key, count, created=at if created else None)
        yield family

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class UsageWriterCollector:
    """Reads the usage writer's live figures at scrape time."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


class LoopLagCollector:
    """Reads the event-loop lag monitor (llmgate/looplag.py) at scrape time."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        m = self.monitor
        yield GaugeMetricFamily(
            "llmgate_event_loop_lag_max_seconds",
            "Largest event-loop lag since start, less the time the kernel did not run the process.",
            value=m.max_s,
        )
        yield GaugeMetricFamily(
            "llmgate_event_loop_wall_lag_max_seconds",
            "Largest event-loop lag since start as measured (including waits for a CPU).",
            value=m.wall_max_s,
        )
        lag = _Histogram(LAG_BUCKETS)
        lag.counts, lag.total = list(m.counts), m.total_s
        family = HistogramMetricFamily(
            "llmgate_event_loop_lag_seconds", "Event-loop lag (less waits for a CPU), sampled every 10 ms."
        )
        family.add_metric((), lag.buckets(), lag.total)
        yield family

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class _Histogram:
    """Bucket counts and a sum; exported cumulatively at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        from prometheus_client.utils import floatToGoString

        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class CallStats:
    """The per-call figures as plain Python numbers, turned into metric families at scrape time.

    `observe` runs on the event loop for every call, so it does dict and list
    arithmetic only — no locks, no `.labels()` — which is several times cheaper
    than prometheus_client's own Counter/Histogram children. Cost is summed in
    integer nano-USD (exact) and shown in USD.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.gateway_added = _Histogram(GATEWAY_LATENCY_BUCKETS)
        self.upstream: dict[str, _Histogram] = {}
        self.ttft: dict[str, _Histogram] = {}
        self.tokens: dict[str, list[int]] = {}  # model -> [input, cached_input, output, reasoning]
        self.cost_nusd: dict[str, int] = {}
        self.retries: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily(
            "llmgate_requests", "Calls by surface, model and status.", labels=("surface", "model", "status")
        )
        for (surface, model, status), count in list(self.requests.items()):
            requests.add_metric((surface, model, str(status)), count)
        yield requests
        added = HistogramMetricFamily(
            "llmgate_gateway_added_latency_seconds", "Wall time of a call minus the upstream's time."
        )
        added.add_metric((), self.gateway_added.buckets(), self.gateway_added.total)
        yield added
        yield _histograms(
            "llmgate_upstream_latency_seconds",
            "Upstream time of the attempt that answered (streams: until the end).",
            "provider",
            self.upstream,
        )
        yield _histograms(
            "llmgate_time_to_first_token_seconds",
            "From the request's arrival to the first streamed token.",
            "model",
            self.ttft,
        )
        tokens = CounterMetricFamily("llmgate_tokens", "Tokens by model and kind.", labels=("model", "kind"))
        for model, counts in list(self.tokens.items()):
            for kind, count in zip(TOKEN_KINDS, counts, strict=True):
                tokens.add_metric((model, kind), count)
        yield tokens
        cost = CounterMetricFamily("llmgate_cost_usd", "Cost in USD by model.", labels=("model",))
        for model, nusd in list(self.cost_nusd.items()):
            cost.add_metric((model,), nusd * _NANO)
        yield cost
        retries = CounterMetricFamily(
            "llmgate_upstream_retries", "Upstream attempts beyond the first.", labels=("model",)
        )
        for model, count in list(self.retries.items()):
            retries.add_metric((model,), count)
        yield retries

    def describe(self) -> Iterable[Metric]:
        return self.collect()


def _histograms(name: str, documentation: str, label: str, by_label: dict[str, _Histogram]) -> Metric:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, documentation, labels=(label,))
    for value, histogram in list(by_label.items()):
        family.add_metric((value,), histogram.buckets(), histogram.total)
    return family


class LimiterStatsCollector:
    """Reads the throttle limiter's `stats` dict (llmgate.throttle.limiter.new_stats) at scrape time."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        stats = dict(self.stats)
        yield CounterMetricFamily(
            "llmgate_limiter_store_errors",
            "Limiter backend (Redis) failures.",
            value=stats.get("store_errors", 0),
        )
        outcomes = CounterMetricFamily(
            "llmgate_limiter_outcomes",
            "Limiter outcomes: admitted, queued, throttled, quota_exceeded, store_* fallbacks.",
            labels=("outcome",),
        )
        for outcome, count in sorted(stats.items()):
            if outcome != "store_errors":
                outcomes.add_metric((outcome,), count)
        yield outcomes

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class Metrics:
    """The gateway's counters and histograms, in a registry of their own (built on first scrape)."""

    def __init__(
        self, known_models: Iterable[str] | None = None, max_models: int = 500, process_metrics: bool = True
    ) -> None:
        self.known_models = frozenset(known_models) if known_models is not None else None
        self.max_models = max_models
        self.process_metrics = process_metrics
        self._model_labels: dict[str, str] = {}
        self.calls = CallStats()
        self.throttle = EventCounter(
            "llmgate_throttle_decisions", "Throttle refusals and waits by scope and reason.", ("scope", "reason")
        )
        self.upstream_errors = EventCounter(
            "llmgate_upstream_errors", "Failed upstream attempts.", ("provider", "code")
        )
        self.cooldowns = EventCounter("llmgate_deployment_cooldowns", "Deployments put in cooldown.", ("deployment",))
        self._bound: list[Any] = []  # collectors bound by the app, in order
        self._registry: CollectorRegistry | None = None
        self._registry_lock = threading.Lock()

    @property
    def registry(self) -> CollectorRegistry:
        """Every collector in one CollectorRegistry, in a fixed order (that of the exposition)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.process_collector import ProcessCollector

            with self._registry_lock:
                if self._registry is None:
                    registry = CollectorRegistry()
                    for collector in (self.calls, self.throttle, self.upstream_errors, self.cooldowns):
                        registry.register(collector)
                    if self.process_metrics:
                        ProcessCollector(registry=registry)
                    for collector in self._bound:
                        registry.register(collector)
                    self._registry = registry
        return self._registry

    def _bind(self, collector: Any) -> None:
        with self._registry_lock:
            self._bound.append(collector)
            if self._registry is not None:
                self._registry.register(collector)

    # --- per call --------------------------------------------------------------------

    def observe(self, ctx: RequestContext, now: float | None = None) -> None:
        """Count one settled call. `now` is a perf_counter reading (default: now)."""
        end = time.perf_counter() if now is None else now
        calls = self.calls
        model = self._model_label(ctx.model)
        key = (ctx.surface, model, ctx.status)
        calls.requests[key] = calls.requests.get(key, 0) + 1
        upstream = ctx.upstream_latency
        if upstream > 0 and ctx.deployment is not None:
            provider = ctx.deployment.provider.name
            histogram = calls.upstream.get(provider)
            if histogram is None:
                histogram = calls.upstream[provider] = _Histogram(UPSTREAM_LATENCY_BUCKETS)
            histogram.observe(upstream)
        calls.gateway_added.observe(max(0.0, end - ctx.started - upstream))
        if ctx.first_token_at:
            histogram = calls.ttft.get(model)
            if histogram is None:
                histogram = calls.ttft[model] = _Histogram(TTFT_BUCKETS)
            histogram.observe(ctx.first_token_at - ctx.started)
        usage = ctx.usage
        if usage is not None:
            counts = calls.tokens.get(model)
            if counts is None:
                counts = calls.tokens[model] = [0, 0, 0, 0]
            counts[0] += usage.input_tokens
            counts[1] += usage.cached_input_tokens
            counts[2] += usage.output_tokens
            counts[3] += usage.reasoning_tokens
        if ctx.cost_nusd:
            calls.cost_nusd[model] = calls.cost_nusd.get(model, 0) + ctx.cost_nusd
        if ctx.attempts > 1:
            calls.retries[model] = calls.retries.get(model, 0) + ctx.attempts - 1

    record = observe  # a Metrics is also a UsageSink (see llmgate.usage.UsageSinks)

    def _model_label(self, model: str) -> str:
        label = self._model_labels.get(model)
        if label is None:
            allowed = self.known_models is None or model in self.known_models
            label = model if allowed and model and len(self._model_labels) < self.max_models else OTHER
            if label != OTHER:
                self._model_labels[model] = label
        return label

    # --- events from other parts -----------------------------------------------------

    def throttle_decision(self, scope: str, reason: str) -> None:
        """A limit refused or delayed a call (scope: key/team/global/model/policy; reason: rpm/tpm/...)."""
        self.throttle.inc(scope, reason)

    def upstream_error(self, provider: str, code: str | int | None) -> None:
        """One failed upstream attempt (whether or not it was retried)."""
        self.upstream_errors.inc(provider, code if code is not None else "unknown")

    def cooldown(self, deployment: str) -> None:
        self.cooldowns.inc(deployment)

    def bind_limiter_stats(self, stats: dict[str, int]) -> None:
        """Expose the limiter's own counters (`ThrottleLimiter.stats`): store errors and outcomes."""
        self._bind(LimiterStatsCollector(stats))

    def bind_loop_lag(self, monitor: Any) -> None:
        """Expose the event-loop lag monitor's figures (llmgate.looplag.LoopLagMonitor)."""
        self._bind(LoopLagCollector(monitor))

    def bind_usage_writer(self, writer: Any) -> None:
        """Expose the usage writer's queue depth and written/spilled/dropped totals."""
        self._bind(UsageWriterCollector(writer))

    # --- exposition ------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry)

    async def asgi(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        """`GET /metrics` as a raw ASGI app."""
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8", [(b"allow", b"GET, HEAD")])
            return
        if self._registry is None:  # the first scrape imports prometheus_client (~25 ms): not on the loop
            await asyncio.to_thread(lambda: self.registry)
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
