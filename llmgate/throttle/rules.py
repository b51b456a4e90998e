"""Which scopes a request touches and the limits in force for each (pure).

Scopes: global (`[throttle.global]`), team (`[throttle.teams.<team>]`), key (the
key record, field by field falling back to `[limits]`), model
(`[throttle.models.<model>]`) and key+model (the key's
`metadata.model_limits.<model>`). The master key is not limited by key scopes but
counts toward global and model. Teams kept in the database override the config's
`[throttle.teams]` entry of the same name (`ThrottleLimiter.set_team_limits`).

A step policy in force REPLACES the limits it names for its scope; when two
policies name the same limit of one scope, the tighter one wins. The result is
compiled into a `Plan`: the flat list of checks a backend runs atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from llmgate.config import LimitSet, PolicyStep, Settings, ThrottlePolicy
from llmgate.types import KeyInfo

# The rate limits: name -> (window in ms, counts tokens).
RATE_LIMITS: dict[str, tuple[int, bool]] = {
    "rpm": (60_000, False),
    "rps": (1_000, False),
    "tpm": (60_000, True),
    "tpd": (86_400_000, True),
}
_STEP_FIELDS = ("rpm", "rps", "tpm", "tpd", "max_concurrency")
_NANO_PER_USD = Decimal(1_000_000_000)


@dataclass(frozen=True, slots=True)
class Limits:
    """The resolved limits of one scope; None means unlimited."""

    rpm: int | None = None
    rps: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    max_concurrency: int | None = None
    max_wait_ms: int = 0
    budget_nusd: int | None = None
    budget_period: str = "month"
    # limit name -> "policy/step" for limits a step policy put in force.
    via: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str  # global | team | key | model | key_model
    id: str  # the storage id: g, t:<team>, k:<key id>, m:<model>, km:<key id>:<model>
    label: str  # for messages: "key 'alice'"
    limits: Limits


@dataclass(frozen=True, slots=True)
class RateCheck:
    scope: Scope
    name: str  # rpm | rps | tpm | tpd
    limit: int
    window_ms: int
    tokens: bool
    counter: str  # "<scope id>|<name>"


@dataclass(frozen=True, slots=True)
class ConcurrencyCheck:
    scope: Scope
    limit: int
    counter: str


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    scope: Scope
    limit_nusd: int
    period: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a backend checks for one (key, model, steps in force)."""

    scopes: tuple[Scope, ...]
    rates: tuple[RateCheck, ...]
    concurrency: tuple[ConcurrencyCheck, ...]
    budgets: tuple[BudgetCheck, ...]
    key_scope: str | None  # the key scope id: spend and tokens-today are kept for it
    steps_header: str | None  # x-llmgate-throttle-step, when a step above the first is in force
    needs_tokens: bool = field(init=False)
    waits: bool = field(init=False)
    # Backends keep derived per-plan data here (counter objects, key names): plans are cached.
    memo: dict[Any, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs_tokens", any(r.tokens for r in self.rates))
        object.__setattr__(self, "waits", any(s.limits.max_wait_ms > 0 for s in self.scopes))
        object.__setattr__(self, "memo", {})


StepInForce = tuple[ThrottlePolicy, int]


def map_usd_to_nusd(value: Decimal | str | None) -> int | None:
    if value is None:
        return None
    return int(Decimal(value) * _NANO_PER_USD)


def build_limits(limit_set: LimitSet | None) -> Limits:
    if limit_set is None:
        return Limits()
    return Limits(
        rpm=limit_set.rpm,
        rps=limit_set.rps,
        tpm=limit_set.tpm,
        tpd=limit_set.tpd,
        max_concurrency=limit_set.max_concurrency,
        max_wait_ms=limit_set.max_wait_ms or 0,
        budget_nusd=map_usd_to_nusd(limit_set.budget_usd),
        budget_period=limit_set.budget_period,
    )


def build_key_limits(key: KeyInfo, defaults: LimitSet) -> Limits:
    """The key record's limits, each falling back to the `[limits]` default."""

    def pick(name: str) -> Any:
        own = getattr(key, name)
        return own if own is not None else getattr(defaults, name)

    return Limits(
        rpm=pick("rpm"),
        rps=pick("rps"),
        tpm=pick("tpm"),
        tpd=pick("tpd"),
        max_concurrency=pick("max_concurrency"),
        max_wait_ms=pick("max_wait_ms") or 0,
        budget_nusd=map_usd_to_nusd(pick("budget_usd")),
        budget_period=pick("budget_period") or "month",
    )


def build_key_model_limits(key: KeyInfo, model: str) -> Limits:
    table = (key.metadata or {}).get("model_limits") or {}
    own = table.get(model) if isinstance(table, dict) else None
    if not isinstance(own, dict):
        return Limits()
    return build_limits(LimitSet.model_validate(own))


def apply_steps(limits: Limits, steps: Sequence[tuple[PolicyStep, str]]) -> Limits:
    """Replace the limits the steps name; the tightest step wins a shared limit."""
    if not steps:
        return limits
    values = {name: getattr(limits, name) for name in _STEP_FIELDS}
    via = dict(limits.via)
    replaced: set[str] = set()
    for step, label in steps:
        for name in _STEP_FIELDS:
            value = getattr(step, name)
            if value is None:
                continue
            if name not in replaced or value < values[name]:
                values[name] = value
                via[name] = label
                replaced.add(name)
    return Limits(
        **values,
        max_wait_ms=limits.max_wait_ms,
        budget_nusd=limits.budget_nusd,
        budget_period=limits.budget_period,
        via=via,
    )


def build_team_limit_set(record: Mapping[str, Any]) -> LimitSet:
    """A team record's limits (a database row or a config table): the known limit fields only."""
    fields = {name: record[name] for name in LimitSet.model_fields if record.get(name) is not None}
    return LimitSet.model_validate(fields)


def build_scopes(
    settings: Settings,
    key: KeyInfo,
    model: str,
    steps: Sequence[StepInForce] = (),
    teams: Mapping[str, LimitSet] | None = None,
) -> list[Scope]:
    """The scopes one request touches, with the limits in force (empty scopes left out).

    `teams` replaces `[throttle.teams]` when given (team records kept in the database).
    """
    throttle = settings.throttle
    team_table = throttle.teams if teams is None else teams
    by_kind: dict[str, list[tuple[PolicyStep, str]]] = {}
    for policy, index in steps:
        by_kind.setdefault(policy.scope, []).append((policy.steps[index], f"{policy.name}/{index}"))
    candidates: list[tuple[str, str, str, Limits]] = [
        ("global", "g", "the gateway", build_limits(throttle.global_limits)),
    ]
    if key.team is not None:
        candidates.append(("team", f"t:{key.team}", f"team '{key.team}'", build_limits(team_table.get(key.team))))
    if not key.is_master:
        candidates.append(("key", f"k:{key.id}", f"key '{key.name}'", build_key_limits(key, settings.limits)))
    candidates.append(("model", f"m:{model}", f"model '{model}'", build_limits(throttle.models.get(model))))
    if not key.is_master:
        candidates.append(
            (
                "key_model",
                f"km:{key.id}:{model}",
                f"key '{key.name}' on model '{model}'",
                build_key_model_limits(key, model),
            )
        )
    scopes = []
    for kind, scope_id, label, limits in candidates:
        limits = apply_steps(limits, by_kind.get(kind, ()))
        if has_limits(limits):
            scopes.append(Scope(kind, scope_id, label, limits))
    return scopes


def has_limits(limits: Limits) -> bool:
    return any(getattr(limits, name) is not None for name in (*_STEP_FIELDS, "budget_nusd"))


def build_plan(scopes: Sequence[Scope], key: KeyInfo, steps: Sequence[StepInForce] = ()) -> Plan:
    rates: list[RateCheck] = []
    concurrency: list[ConcurrencyCheck] = []
    budgets: list[BudgetCheck] = []
    for scope in scopes:
        limits = scope.limits
        for name, (window_ms, tokens) in RATE_LIMITS.items():
            value = getattr(limits, name)
            if value is not None:
                rates.append(RateCheck(scope, name, value, window_ms, tokens, f"{scope.id}|{name}"))
        if limits.max_concurrency is not None:
            concurrency.append(ConcurrencyCheck(scope, limits.max_concurrency, f"{scope.id}|conc"))
        if limits.budget_nusd is not None:
            budgets.append(BudgetCheck(scope, limits.budget_nusd, limits.budget_period))
    raised = [f"{policy.name}/{index}" for policy, index in steps if index > 0]
    return Plan(
        scopes=tuple(scopes),
        rates=tuple(rates),
        concurrency=tuple(concurrency),
        budgets=tuple(budgets),
        key_scope=None if key.is_master else f"k:{key.id}",
        steps_header=", ".join(raised) or None,
    )
