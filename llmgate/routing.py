"""Model groups, the choice of a deployment for each attempt, and each deployment's health.

Several `[[models]]` entries with one `name` form a group. For every upstream
attempt `Router.pick` chooses one deployment of a group: the group's strategy
orders the candidates, deployments in cooldown are left out (unless all are:
then the one whose cooldown ends first gets a try), deployments at their own
upstream `rpm`/`tpm` are skipped, and when every deployment is at its limit the
call waits up to the group's `max_wait_ms` before it is refused (429).

Health is a circuit breaker per deployment: `cooldown_failures` upstream faults
within `cooldown_window_s` open it for `cooldown_s`; after that it is half-open
and lets one probe through at a time; the probe's success closes it, its failure
opens it again. Only upstream faults count (retryable errors and 5xx), never a
caller's 4xx.

Everything here is in-process state of one gateway process (like the upstream's
own connection pool): each worker balances and cools down on what it sees.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llmgate.config import ModelSettings, Price, Settings, Timeouts
from llmgate.errors import GatewayError, NotFound, ProviderDisabled, Throttled
from llmgate.throttle.window import SlidingWindow, bucket_of
from providers import provider_class
from providers.base import Provider

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
MINUTE_MS = 60_000
# While every deployment of a group is at its limit, capacity is looked for again
# at least this often (a finished call may refund tokens before a bucket expires).
CAPACITY_POLL_S = 0.05


class Breaker:
    """One deployment's circuit breaker (see the module docstring). Times are clock seconds."""

    __slots__ = ("failures", "open_until", "probing", "state")

    def __init__(self) -> None:
        self.state = CLOSED
        self.failures: deque[float] = deque()
        self.open_until = 0.0
        self.probing = False

    def status(self, now: float) -> str:
        if self.state == OPEN and now >= self.open_until:
            return HALF_OPEN
        return self.state

    def admits(self, now: float) -> bool:
        """Whether a call may go to this deployment now (a half-open one: one probe at a time)."""
        status = self.status(now)
        return status == CLOSED or (status == HALF_OPEN and not self.probing)

    def claim(self, now: float) -> bool:
        """Mark an attempt as starting; True when it is a probe (the breaker is not closed)."""
        if self.state == CLOSED:
            return False
        self.state = HALF_OPEN if now >= self.open_until else self.state
        self.probing = True
        return True

    def succeed(self, probe: bool) -> None:
        if probe:
            self.state = CLOSED
            self.failures.clear()
            self.probing = False

    def release(self, probe: bool) -> None:
        """An attempt ended without a verdict (cancelled): let another probe through."""
        if probe:
            self.probing = False

    def fail(self, now: float, probe: bool, threshold: int, window_s: float, cooldown_s: float) -> bool:
        """Count one upstream fault; True when this opens the breaker."""
        if probe:
            self._open(now, cooldown_s)
            return True
        if self.state != CLOSED:  # a call that started before the breaker opened
            return False
        failures = self.failures
        failures.append(now)
        while failures and failures[0] <= now - window_s:
            failures.popleft()
        if len(failures) >= threshold:
            self._open(now, cooldown_s)
            return True
        return False

    def _open(self, now: float, cooldown_s: float) -> None:
        self.state = OPEN
        self.open_until = now + cooldown_s
        self.probing = False
        self.failures.clear()


@dataclass(eq=False, slots=True)
class Deployment:
    """One `[[models]]` entry bound to its provider adapter, with its live state."""

    model: ModelSettings
    provider: Provider
    timeouts: Timeouts
    inflight: int = 0
    label: str = field(init=False)
    latency: float | None = None  # EWMA of upstream latency, seconds (streams: to the first byte)
    breaker: Breaker = field(default_factory=Breaker)
    requests: SlidingWindow | None = None  # this minute's calls, when the deployment has an `rpm`
    tokens: SlidingWindow | None = None  # this minute's tokens, when it has a `tpm`
    failures: int = 0  # upstream faults, ever
    cooldowns: int = 0  # times the breaker opened
    limited: bool = field(init=False)  # has its own rpm or tpm
    price: Price | None = field(init=False)  # for lowest-cost: config's, or the catalog's (Router.use_prices)

    def __post_init__(self) -> None:
        self.label = f"{self.provider.name}/{self.model.upstream_model}"
        if self.model.rpm is not None:
            self.requests = SlidingWindow(MINUTE_MS)
        if self.model.tpm is not None:
            self.tokens = SlidingWindow(MINUTE_MS)
        self.limited = self.requests is not None or self.tokens is not None
        self.price = self.model.price

    @property
    def upstream(self) -> str:
        return self.model.upstream_model

    @property
    def disabled(self) -> bool:
        return bool(self.provider.settings.disabled_reason)

    def capacity_wait_ms(self, now_ms: int, need_tokens: int) -> int:
        """0 when the deployment's own rpm/tpm admit one more call of `need_tokens`; else
        milliseconds until they may (capacity can also come back sooner, from refunds)."""
        wait = 0
        requests, tokens = self.requests, self.tokens
        if requests is not None:
            assert self.model.rpm is not None
            bucket = bucket_of(now_ms, MINUTE_MS)
            excess = requests.used(bucket) + 1 - self.model.rpm
            if excess > 0:
                wait = requests.wait_ms(now_ms, excess) or MINUTE_MS
        if tokens is not None:
            assert self.model.tpm is not None
            used = tokens.used(bucket_of(now_ms, MINUTE_MS))
            excess = used + need_tokens - self.model.tpm
            if excess > 0 and used > 0:  # a call bigger than the whole limit goes alone
                wait = max(wait, tokens.wait_ms(now_ms, excess) or MINUTE_MS)
        return wait

    def charge(self, now_ms: int, need_tokens: int) -> int:
        """Count one call against the deployment's own limits; returns the bucket it went in."""
        bucket = bucket_of(now_ms, MINUTE_MS)
        if self.requests is not None:
            self.requests.add(bucket, 1)
        if self.tokens is not None:
            self.tokens.add(bucket, need_tokens)
        return bucket

    def settle_tokens(self, bucket: int, delta: int, now_ms: int) -> None:
        """Correct a call's token charge to its actual usage."""
        if self.tokens is not None and delta:
            self.tokens.adjust(bucket, delta, bucket_of(now_ms, MINUTE_MS))


# -- strategies: each orders a group's candidates, best first ---------------------------


def order_weighted(candidates: list[Deployment], rng: random.Random) -> list[Deployment]:
    """Random, in proportion to `weight` (without replacement)."""
    pool = list(candidates)
    ordered = []
    while pool:
        weights = [d.model.weight for d in pool]
        pick = rng.choices(pool, weights=weights)[0] if sum(weights) > 0 else pool[0]
        ordered.append(pick)
        pool.remove(pick)
    return ordered


def order_least_inflight(candidates: list[Deployment], rng: random.Random) -> list[Deployment]:
    """Fewest calls in flight first; ties in random order."""
    return sorted(_shuffled(candidates, rng), key=lambda d: d.inflight)


def order_lowest_latency(candidates: list[Deployment], rng: random.Random) -> list[Deployment]:
    """Untried deployments first (so each gets measured), then the lowest latency EWMA."""
    return sorted(_shuffled(candidates, rng), key=lambda d: (d.latency is not None, d.latency or 0.0))


def order_priority(candidates: list[Deployment], rng: random.Random) -> list[Deployment]:
    """Ordered failover: the lowest `order` first, then config order."""
    return sorted(candidates, key=lambda d: d.model.order)


def order_lowest_cost(candidates: list[Deployment], rng: random.Random) -> list[Deployment]:
    """The cheapest (input + output price per 1M tokens) first; unknown prices last; ties random."""
    return sorted(_shuffled(candidates, rng), key=lambda d: _cost_key(d.price))


def _cost_key(price: Price | None) -> tuple[bool, Decimal]:
    return (price is None, Decimal(0) if price is None else price.input + price.output)


def _shuffled(candidates: list[Deployment], rng: random.Random) -> list[Deployment]:
    out = list(candidates)
    rng.shuffle(out)
    return out


Strategy = Callable[[list[Deployment], random.Random], list[Deployment]]

STRATEGIES: dict[str, Strategy] = {
    "weighted": order_weighted,
    "least-inflight": order_least_inflight,
    "lowest-latency": order_lowest_latency,
    "priority": order_priority,
    "lowest-cost": order_lowest_cost,
}


@dataclass(slots=True)
class Group:
    """A model name's deployments and the group-level knobs (the first entry that sets one wins)."""

    name: str
    deployments: list[Deployment]
    strategy: str = "weighted"
    max_wait_s: float = 0.0
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()
    tpm_limited: bool = False  # some deployment has a `tpm`: calls need a token estimate


@dataclass(slots=True)
class Attempt:
    """One attempt's claim on a deployment, handed back to the router when it ends."""

    deployment: Deployment
    probe: bool
    bucket: int
    charged_tokens: int


@dataclass(slots=True)
class RouterStats:
    """Counters for metrics (plain ints: cheap on the hot path, read at scrape time)."""

    retries: int = 0  # attempts beyond the first, fallbacks included
    fallbacks: int = 0  # times a call moved on to a fallback group
    throttled: int = 0  # calls refused because every deployment was at its own rpm/tpm
    capacity_waits: int = 0  # calls that waited for a deployment's rpm/tpm
    cooldowns: dict[str, int] = field(default_factory=dict)  # deployment label -> breaker openings


def build_providers(settings: Settings) -> dict[str, Provider]:
    return {name: provider_class(p.type)(name, p) for name, p in settings.providers.items()}


def build_timeouts(model: ModelSettings, provider: Provider, deadline_s: float) -> Timeouts:
    """The provider's timeouts, overridden field by field by the model's, none beyond the deadline."""
    base = provider.settings.effective_timeouts()
    own = model.timeouts
    values = base.model_dump()
    if own is not None:
        values.update({name: getattr(own, name) for name in own.model_fields_set})
    for name in ("first_byte", "total"):
        values[name] = min(values[name], deadline_s)
    return Timeouts(**values)


def build_groups(settings: Settings, providers: dict[str, Provider]) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    deadline_s = settings.routing.deadline_s
    for m in settings.models:
        provider = providers[m.provider]
        dep = Deployment(m, provider, build_timeouts(m, provider, deadline_s))
        group = groups.get(m.name)
        if group is None:
            group = groups[m.name] = Group(m.name, [])
        group.deployments.append(dep)
    for group in groups.values():
        models = [d.model for d in group.deployments]
        group.strategy = _first_set(m.strategy for m in models) or "weighted"
        group.max_wait_s = (_first_set(m.max_wait_ms for m in models) or 0) / 1000
        group.fallbacks = _first_set(m.fallbacks for m in models) or ()
        group.context_window_fallbacks = _first_set(m.context_window_fallbacks for m in models) or ()
        group.tpm_limited = any(m.tpm is not None for m in models)
    return groups


def _first_set(values: Iterable[Any]) -> Any:
    for value in values:
        if value:
            return value
    return None


class Router:
    """The model groups of one gateway and the live state of their deployments.

    `clock` (seconds, monotonic), `sleep` and `rng` are injectable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        providers: dict[str, Provider],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.routing = settings.routing
        self.providers = providers
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.by_name = build_groups(settings, providers)
        self.groups: dict[str, list[Deployment]] = {name: g.deployments for name, g in self.by_name.items()}
        self.stats = RouterStats()
        # Set by the metrics exporter: a deployment label when its breaker opens; the
        # provider name and error code of every failed upstream attempt.
        self.on_cooldown: Callable[[str], None] | None = None
        self.on_upstream_error: Callable[[str, str | int | None], None] | None = None

    def has_model(self, name: str) -> bool:
        return name in self.by_name

    def group(self, name: str) -> Group:
        try:
            return self.by_name[name]
        except KeyError:
            raise NotFound(f"The model `{name}` does not exist.", param="model") from None

    def deployments(self) -> Iterable[Deployment]:
        for group in self.by_name.values():
            yield from group.deployments

    def use_prices(self, price_for: Callable[[Deployment], Price | None]) -> None:
        """Take each deployment's price (for `lowest-cost`) from a price book, e.g. the catalog's."""
        for dep in self.deployments():
            dep.price = price_for(dep)

    # -- choosing ---------------------------------------------------------------------

    def candidates(self, group: Group, tried: Iterable[Deployment] = (), now: float | None = None) -> list[Deployment]:
        """The deployments an attempt may go to, best first.

        Disabled providers only when nothing else is configured; deployments in
        cooldown only when all are (then the one whose cooldown ends first);
        deployments this call has not tried yet before those it has.
        """
        deps = group.deployments
        if len(deps) == 1 and deps[0].breaker.state == CLOSED:
            return deps
        now = self.clock() if now is None else now
        enabled = [d for d in deps if not d.disabled] or deps
        healthy = [d for d in enabled if d.breaker.admits(now)]
        if not healthy:
            healthy = [min(enabled, key=lambda d: d.breaker.open_until)]
        if len(healthy) == 1:
            return healthy
        tried_set = set(tried)
        fresh = [d for d in healthy if d not in tried_set]
        ordered = STRATEGIES[group.strategy](fresh or healthy, self.rng)
        if fresh and len(fresh) < len(healthy):
            ordered.extend(STRATEGIES[group.strategy]([d for d in healthy if d in tried_set], self.rng))
        return ordered

    async def pick(self, group: Group, tried: Iterable[Deployment] = (), need_tokens: int = 0) -> Attempt:
        """Claim a deployment for one attempt: the first candidate under its own rpm/tpm.

        When all are at their limits, waits up to the group's `max_wait_ms` for
        capacity, then raises Throttled (429) with the time until capacity returns.
        """
        waited = 0.0
        while True:
            now = self.clock()
            now_ms = int(now * 1000)
            soonest = math.inf
            for dep in self.candidates(group, tried, now):
                if not dep.limited:
                    return Attempt(dep, dep.breaker.claim(now), 0, 0)
                wait_ms = dep.capacity_wait_ms(now_ms, need_tokens)
                if wait_ms == 0:
                    bucket = dep.charge(now_ms, need_tokens)
                    return Attempt(dep, dep.breaker.claim(now), bucket, need_tokens if dep.tokens is not None else 0)
                soonest = min(soonest, wait_ms / 1000)
            budget = group.max_wait_s - waited
            if budget <= 0:
                self.stats.throttled += 1
                raise Throttled(
                    f"Every deployment of `{group.name}` is at its own rate limit.",
                    code="deployment_rate_limited",
                    retry_after=soonest,
                )
            if not waited:
                self.stats.capacity_waits += 1
            pause = min(soonest, budget, CAPACITY_POLL_S)
            await self.sleep(pause)
            waited += pause

    # -- outcomes ---------------------------------------------------------------------

    def succeeded(self, attempt: Attempt, latency: float | None) -> None:
        """The upstream answered. `latency` feeds the EWMA (None: not a latency sample)."""
        dep = attempt.deployment
        dep.breaker.succeed(attempt.probe)
        attempt.probe = False  # the probe is over; a later failure (mid-stream) counts as any other
        if latency is not None:
            alpha = self.routing.latency_ewma_alpha
            dep.latency = latency if dep.latency is None else dep.latency + alpha * (latency - dep.latency)

    def failed(self, attempt: Attempt, exc: GatewayError) -> None:
        """The attempt failed: upstream faults count toward the breaker; caller errors do not."""
        dep = attempt.deployment
        if not is_upstream_fault(exc):
            if isinstance(exc, ProviderDisabled):
                dep.breaker.release(attempt.probe)
            else:  # the upstream answered (the caller's fault): it is alive
                dep.breaker.succeed(attempt.probe)
            return
        dep.failures += 1
        if self.on_upstream_error is not None:
            self.on_upstream_error(dep.provider.name, exc.code or exc.status)
        r = self.routing
        if dep.breaker.fail(self.clock(), attempt.probe, r.cooldown_failures, r.cooldown_window_s, r.cooldown_s):
            dep.cooldowns += 1
            cooldowns = self.stats.cooldowns
            cooldowns[dep.label] = cooldowns.get(dep.label, 0) + 1
            if self.on_cooldown is not None:
                self.on_cooldown(dep.label)

    def abandoned(self, attempt: Attempt) -> None:
        """The attempt was cancelled (client gone, deadline): no verdict on the deployment."""
        attempt.deployment.breaker.release(attempt.probe)

    def settle_tokens(self, attempt: Attempt, actual_tokens: int) -> None:
        """Correct the deployment's tpm count from the estimate to the call's actual tokens."""
        dep = attempt.deployment
        if dep.tokens is not None:
            dep.settle_tokens(attempt.bucket, actual_tokens - attempt.charged_tokens, int(self.clock() * 1000))

    # -- for /admin/deployments ---------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock()
        window_s = self.routing.cooldown_window_s
        return [describe_deployment(g, d, now, window_s) for g in self.by_name.values() for d in g.deployments]


def is_upstream_fault(exc: GatewayError) -> bool:
    """Whether an error is the upstream's fault (counts toward cooldown), not the caller's or config's."""
    return exc.retryable or (exc.status >= 500 and not isinstance(exc, ProviderDisabled))


def describe_deployment(group: Group, dep: Deployment, now: float, window_s: float) -> dict[str, Any]:
    """One deployment's state as `/admin/deployments` shows it (`until`: Unix time the cooldown ends)."""
    breaker = dep.breaker
    status = breaker.status(now)
    now_ms = int(now * 1000)
    bucket = bucket_of(now_ms, MINUTE_MS)
    return {
        "model": group.name,
        "deployment": dep.label,
        "provider": dep.provider.name,
        "upstream_model": dep.upstream,
        "strategy": group.strategy,
        "weight": dep.model.weight,
        "order": dep.model.order,
        "disabled": dep.disabled,
        "inflight": dep.inflight,
        "latency_ewma_ms": None if dep.latency is None else round(dep.latency * 1000, 3),
        "failures_total": dep.failures,
        "recent_failures": sum(1 for t in breaker.failures if t > now - window_s),
        "cooldowns_total": dep.cooldowns,
        "cooldown": {
            "state": status,
            "until": round(time.time() + breaker.open_until - now, 3) if status == OPEN else None,
            "remaining_s": round(breaker.open_until - now, 3) if status == OPEN else None,
            "probing": breaker.probing,
        },
        "rpm": {"limit": dep.model.rpm, "used": dep.requests.used(bucket) if dep.requests is not None else None},
        "tpm": {"limit": dep.model.tpm, "used": dep.tokens.used(bucket) if dep.tokens is not None else None},
    }
